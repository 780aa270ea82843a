// Device-to-server delay (ms): delay_ms = server receive time - device time. The server
// receive time itself is _time + delay_ms (computed below as received_ms).
delay = from(bucket: "locus/autogen")
    |> range(start: -1h)
    |> filter(fn: (r) => r._measurement == "courier_location" and r._field == "delay_ms")

delay
    |> group()
    |> aggregateWindow(every: 1m, fn: (column, tables=<-) => tables |> quantile(q: 0.99, column: column), createEmpty: false)
    |> yield(name: "p99")

delay
    |> map(fn: (r) => ({r with received_ms: int(v: r._time) / 1000000 + r._value}))
    |> keep(columns: ["_time", "courier", "_value", "received_ms"])
    |> limit(n: 100)
    |> yield(name: "received_time_sample")
