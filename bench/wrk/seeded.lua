-- Reads the tokens file `percore-bench seed` writes: a header "first_id last_id domain
-- password", then "token user_id" per line. Shared by the scripts that act as seeded users:
--   package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
--   local seeded = require("seeded").load(args[1])
local M = {}

function M.load(path)
  path = path or "bench/results/seed-tokens.txt"
  local file = assert(io.open(path, "r"), "cannot open " .. path)
  local a, b, d, p = file:read("*l"):match("^(%d+) (%d+) (%S+) (%S+)$")
  local seeded = { first_id = tonumber(a), last_id = tonumber(b), domain = d, password = p, tokens = {} }
  for line in file:lines() do
    local token = line:match("^(%S+) %d+$")
    if token then seeded.tokens[#seeded.tokens + 1] = token end
  end
  file:close()
  assert(#seeded.tokens > 0, "no tokens in " .. path)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  return seeded
end

return M
