// Fixes per second over the last hour. InfluxDB 1.x databases appear in Flux as
// "<database>/<retention policy>" buckets; on 2.x/3.x/Cloud use the bucket name.
from(bucket: "locus/autogen")
    |> range(start: -1h)
    |> filter(fn: (r) => r._measurement == "courier_location" and r._field == "lat")
    |> group()
    |> aggregateWindow(every: 1s, fn: count, createEmpty: true)
    |> yield(name: "fixes_per_second")
