-- wrk's done() for every script: prints the latency percentiles the results record, in µs
-- (wrk's --latency report has no p95 and rounds). Use:
--   package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
--   done = require("percentiles")
return function(summary, latency, requests)
  for _, p in ipairs({ 50, 90, 95, 99, 99.9 }) do
    io.write(string.format("percentile %g %d\n", p, latency:percentile(p)))
  end
end
