-- Plain GETs of the URL given to wrk (the TechEmpower single-path workloads); only adds the
-- percentiles the results record (wrk's --latency report has no p95), in µs.
function done(summary, latency, requests)
  for _, p in ipairs({ 50, 90, 95, 99, 99.9 }) do
    io.write(string.format("percentile %g %d\n", p, latency:percentile(p)))
  end
end
