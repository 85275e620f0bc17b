-- wrk script: POST /v1/score with N items (N from the environment, 1000 by
-- default) for one random user, the same body every time (as
-- service_bench --latency sends: ids of the generated world, users
-- 0..USERS-1, items i0..iITEMS-1).
local n = tonumber(os.getenv("N") or "1000")
local users = tonumber(os.getenv("USERS") or "100000")
local items = tonumber(os.getenv("ITEMS") or "10000")
local req

function init(args)
  local ids = {}
  for i = 1, n do ids[i] = '"i' .. math.random(0, items - 1) .. '"' end
  local body = '{"user":"' .. math.random(0, users - 1) .. '","items":[' .. table.concat(ids, ",") .. ']}'
  req = wrk.format("POST", "/v1/score", {["Content-Type"] = "application/json"}, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  io.write(string.format("latency p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, p99.9 %.3f ms; %.0f req/s\n",
                         latency:percentile(50) / 1000, latency:percentile(90) / 1000,
                         latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
                         summary.requests / (summary.duration / 1e6)))
end
