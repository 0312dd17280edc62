-- The jobs workload's enqueue phase: every request is POST /v1/jobs for an e-mail job, by a
-- random seeded session. Counts 202s per second; the workers drain the backlog afterwards.
-- Usage: wrk -s bench/wrk/jobs.lua http://127.0.0.1:8080/v1/jobs -- TOKENS_FILE

package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local tokens

function init(args)
  tokens = require("seeded").load(args[1]).tokens
end

function request()
  return wrk.format("POST", nil, {
    ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)],
    ["Content-Type"] = "application/json",
  }, '{"kind":"email","params":{"subject":"bench","text":"x"}}')
end

done = require("percentiles")
