-- Plain GETs of the URL given to wrk (the TechEmpower single-path workloads).
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
done = require("percentiles")
