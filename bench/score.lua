-- wrk script: GET /v1/score for random users and items of the generated
-- world (users 0..USERS-1, items i0..iITEMS-1). DELAY_MS > 0 makes every
-- connection wait that long after each response, which caps the rate at
-- about connections * 1000 / (DELAY_MS + latency) requests per second
-- (wrk itself has no fixed-rate mode).
local users = tonumber(os.getenv("USERS") or "100000")
local items = tonumber(os.getenv("ITEMS") or "10000")
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

-- The requests are formatted once per thread (4096 random pairs, used in
-- turn), so that the load generator spends its CPU on sending and receiving,
-- not on Lua: it shares the 2 cores with the service under test.
local pool = {}
local next_request = 0

function init(args)
  math.randomseed(seed or 1)
  for i = 1, 4096 do
    pool[i] = wrk.format("GET", "/v1/score?user=" .. math.random(0, users - 1) .. "&item=i" ..
                         math.random(0, items - 1))
  end
end

function request()
  next_request = next_request % #pool + 1
  return pool[next_request]
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

-- wrk --latency prints p50..p99 only; p99.9 and the errors as well.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("latency p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms; " ..
                         "%d requests in %.2f s = %.0f req/s; errors %d\n",
                         latency:percentile(50) / 1000, latency:percentile(99) / 1000,
                         latency:percentile(99.9) / 1000, latency.max / 1000, summary.requests,
                         summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
                         e.connect + e.read + e.write + e.status + e.timeout))
end
