-- The seed-mix workload (issue 3): per request a random seeded session and
--   60%   GET  /v1/me
--   15%   GET  /v1/users?ids=  (20 random seeded ids)
--   15%   GET  /v1/me/events?limit=20
--    5%   POST /v1/events
--    4.9% PUT  /v1/me/prefs
--    0.1% POST /v1/auth/login   (one Argon2 verification on the worker pool, on purpose)
-- Usage: wrk -s bench/wrk/seed-mix.lua http://127.0.0.1:8080 -- TOKENS_FILE
-- TOKENS_FILE is written by `percore-bench seed`: a header "first_id last_id domain
-- password", then "token user_id" per line.

package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local tokens, first_id, last_id, domain, password

function init(args)
  local seeded = require("seeded").load(args[1])
  tokens, first_id, last_id = seeded.tokens, seeded.first_id, seeded.last_id
  domain, password = seeded.domain, seeded.password
end

local themes = { "light", "dark", "system" }

local function authed(method, path, body)
  local headers = { ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)] }
  if body then headers["Content-Type"] = "application/json" end
  return wrk.format(method, path, headers, body)
end

function request()
  local r = math.random()
  if r < 0.60 then
    return authed("GET", "/v1/me")
  elseif r < 0.75 then
    local ids = {}
    for i = 1, 20 do ids[i] = math.random(first_id, last_id) end
    return authed("GET", "/v1/users?ids=" .. table.concat(ids, ","))
  elseif r < 0.90 then
    return authed("GET", "/v1/me/events?limit=20")
  elseif r < 0.95 then
    return authed("POST", "/v1/events", '{"kind":"bench.click","payload":{"x":' .. math.random(1000) .. '}}')
  elseif r < 0.999 then
    return authed("PUT", "/v1/me/prefs", '{"locale":"en","timezone":"UTC","theme":"'
      .. themes[math.random(3)] .. '","email_opt_in":' .. (math.random() < 0.5 and "true" or "false") .. '}')
  else
    local n = math.random(1, last_id - first_id + 1)
    return wrk.format("POST", "/v1/auth/login", { ["Content-Type"] = "application/json" },
      '{"email":"seed-' .. n .. '@' .. domain .. '","password":"' .. password .. '"}')
  end
end

done = require("percentiles")
