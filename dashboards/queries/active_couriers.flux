// Couriers with at least one fix in each minute of the last hour.
from(bucket: "locus/autogen")
    |> range(start: -1h)
    |> filter(fn: (r) => r._measurement == "courier_location" and r._field == "lat")
    |> group(columns: ["courier"])
    |> aggregateWindow(every: 1m, fn: last, createEmpty: false)
    |> group()
    |> aggregateWindow(every: 1m, fn: count, createEmpty: true)
    |> yield(name: "active_couriers")
