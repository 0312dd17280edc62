-- GET /json as TechEmpower's json test sends it (one request per round trip).
-- Usage: wrk -s bench/wrk/json.lua http://127.0.0.1:8080/json
wrk.headers["Accept"] = "application/json,text/html;q=0.9,application/xhtml+xml;q=0.9,application/xml;q=0.8,*/*;q=0.7"
wrk.headers["Connection"] = "keep-alive"
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
done = require("percentiles")
