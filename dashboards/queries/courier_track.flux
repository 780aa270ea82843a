// One courier's track over the last 2 hours (replace "c1"), one row per fix, oldest first.
from(bucket: "locus/autogen")
    |> range(start: -2h)
    |> filter(fn: (r) => r._measurement == "courier_location" and r.courier == "c1")
    |> filter(fn: (r) => r._field == "lat" or r._field == "lon" or r._field == "speed" or r._field == "heading")
    |> group(columns: ["courier"])
    |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
    |> sort(columns: ["_time"])
    |> yield(name: "track")
