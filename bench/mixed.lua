-- wrk script for bench/load.sh: cycles through four kinds of request
-- (a valid small download, a wrong secret, an absent backup, an invalid id),
-- counts statuses per thread, stops each thread after its share of
-- REQUESTS, and prints the totals and any unexpected status.
local threads = {}
local total = tonumber(os.getenv("REQUESTS") or "200000")
local nthreads = tonumber(os.getenv("THREADS") or "2")

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local good = os.getenv("AUTH_GOOD")
  local bad = os.getenv("AUTH_BAD")
  local p = "/api/systems/backups/"
  reqs = {
    wrk.format("GET", p .. "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.bin", { Authorization = good }),
    wrk.format("GET", p .. "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.bin", { Authorization = bad }),
    wrk.format("GET", p .. "01934fab-bc33-7890-a1b2-c3d4e5f6a7b9.bin", { Authorization = good }),
    wrk.format("GET", p .. "..%2f..%2fcredentials", { Authorization = good }),
  }
  n = 0
  done_count = 0
  share = math.floor(total / nthreads)
  s200, s400, s401, s404, other = 0, 0, 0, 0, 0
end

function request()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end

function response(status, headers, body)
  done_count = done_count + 1
  if status == 200 then s200 = s200 + 1
  elseif status == 400 then s400 = s400 + 1
  elseif status == 401 then s401 = s401 + 1
  elseif status == 404 then s404 = s404 + 1
  else other = other + 1 end
  if done_count >= share then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local t = { s200 = 0, s400 = 0, s401 = 0, s404 = 0, other = 0 }
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (th:get(k) or 0) end
  end
  local e = summary.errors
  io.write(string.format(
    "STATUS 200=%d 400=%d 401=%d 404=%d unexpected=%d\n", t.s200, t.s400, t.s401, t.s404, t.other))
  io.write(string.format(
    "ERRORS connect=%d read=%d write=%d timeout=%d status=%d\n",
    e.connect, e.read, e.write, e.timeout, e.status))
  io.write(string.format("LATENCY p50=%.2fms p99=%.2fms max=%.2fms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
