// Speed distribution (m/s) over the last hour: a cumulative histogram over speed bands, and
// the 50th/90th/99th percentiles in 5-minute windows.
speed = from(bucket: "locus/autogen")
    |> range(start: -1h)
    |> filter(fn: (r) => r._measurement == "courier_location" and r._field == "speed")
    |> group()

speed
    |> histogram(bins: [0.5, 2.0, 8.0, 25.0, 1000.0])
    |> yield(name: "histogram")

speed
    |> aggregateWindow(every: 5m, fn: (column, tables=<-) => tables |> quantile(q: 0.5, column: column), createEmpty: false)
    |> yield(name: "p50")

speed
    |> aggregateWindow(every: 5m, fn: (column, tables=<-) => tables |> quantile(q: 0.9, column: column), createEmpty: false)
    |> yield(name: "p90")

speed
    |> aggregateWindow(every: 5m, fn: (column, tables=<-) => tables |> quantile(q: 0.99, column: column), createEmpty: false)
    |> yield(name: "p99")
