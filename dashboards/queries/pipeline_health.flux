// Is data flowing? Fixes per minute and the worst delay per minute over the last 15 minutes.
// Shipping itself (outbox depth, retries, failures) is in locusd's /metrics: locus_influx_*.
base = from(bucket: "locus/autogen")
    |> range(start: -15m)
    |> filter(fn: (r) => r._measurement == "courier_location")

base
    |> filter(fn: (r) => r._field == "lat")
    |> group()
    |> aggregateWindow(every: 1m, fn: count, createEmpty: true)
    |> yield(name: "fixes_per_minute")

base
    |> filter(fn: (r) => r._field == "delay_ms")
    |> group()
    |> aggregateWindow(every: 1m, fn: max, createEmpty: false)
    |> yield(name: "max_delay_ms")
