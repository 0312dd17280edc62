-- GET /plaintext as TechEmpower's plaintext test sends it, pipelined 16 deep.
-- Usage: wrk -s bench/wrk/plaintext.lua http://127.0.0.1:8080/plaintext -- 16
wrk.headers["Accept"] = "text/plain,text/html;q=0.9,application/xhtml+xml;q=0.9,application/xml;q=0.8,*/*;q=0.7"
wrk.headers["Connection"] = "keep-alive"

init = function(args)
  local depth = tonumber(args[1]) or 16
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format()
  end
  req = table.concat(r)
end

request = function()
  return req
end
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
done = require("percentiles")
