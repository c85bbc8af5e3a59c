-- wrk script: POST /v1/reservations, a new user and idempotency key per request.
-- Usage: wrk -s reserve.lua <base url> -- <sku>
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  sku = args[1] or "bench"
  wrk.method = "POST"
  wrk.path = "/v1/reservations"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local user = "u" .. tid .. "-" .. counter
  wrk.headers["Idempotency-Key"] = "k" .. counter
  return wrk.format(nil, nil, nil, '{"sku":"' .. sku .. '","user_id":"' .. user .. '"}')
end
