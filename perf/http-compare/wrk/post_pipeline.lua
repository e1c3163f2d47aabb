-- Pipelined POST /write: each wrk "request" is DEPTH (env, default 16) requests
-- concatenated; wrk counts every response, so Requests/sec is per HTTP request.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
local depth = tonumber(os.getenv("DEPTH") or "16")
local req
init = function(args)
  local r = {}
  local h = { ["Content-Type"] = "text/plain; charset=utf-8" }
  for i = 1, depth do
    r[i] = wrk.format("POST", "/write", h, body)
  end
  req = table.concat(r)
end
request = function()
  return req
end
