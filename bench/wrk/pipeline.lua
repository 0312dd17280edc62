-- Pipelined requests: wrk sends DEPTH copies of its request in one write and counts each
-- response. Usage: wrk -s bench/wrk/pipeline.lua URL -- 16
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
