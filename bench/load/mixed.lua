-- wrk script: an even mix of valid downloads (200), wrong secrets (401),
-- absent backups (404) and invalid ids (400). Every response is checked
-- against its status: a 200 must carry the file (4096 bytes), each error
-- its exact JSON body. Totals are gathered from every thread in done().
local ok_auth = os.getenv("LOAD_AUTH")
local bad_auth = os.getenv("LOAD_BAD_AUTH")
local present = os.getenv("LOAD_ID")
local absent = "01934fab-bc33-7890-a1b2-c3d4e5f6ffff.bin"
local kinds = {
  {path = "/api/systems/backups/" .. present, auth = ok_auth},
  {path = "/api/systems/backups/" .. present, auth = bad_auth},
  {path = "/api/systems/backups/" .. absent, auth = ok_auth},
  {path = "/api/systems/backups/..%2f..%2fetc%2fpasswd", auth = ok_auth},
}
local expected_body = {
  [401] = '{"code":401,"message":"invalid token","data":{}}',
  [404] = '{"code":404,"message":"backup not found","data":{}}',
  [400] = '{"code":400,"message":"validation failed","data":{"type":"validation_error","errors":[{"key":"id","message":"invalid backup id","value":"..%2f..%2fetc%2fpasswd"}]}}',
}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  n = 0
  counts = {[200] = 0, [400] = 0, [401] = 0, [404] = 0}
  unexpected = 0
end

function request()
  n = n + 1
  local k = kinds[(n % #kinds) + 1]
  return wrk.format("GET", k.path, {["Authorization"] = k.auth})
end

function response(status, headers, body)
  if status == 200 then
    if #body ~= 4096 then unexpected = unexpected + 1 end
  elseif expected_body[status] ~= nil then
    if body ~= expected_body[status] then unexpected = unexpected + 1 end
  else
    unexpected = unexpected + 1
  end
  if counts[status] ~= nil then counts[status] = counts[status] + 1 end
end

function done(summary, latency, requests)
  local total = {[200] = 0, [400] = 0, [401] = 0, [404] = 0}
  local bad = 0
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for s, v in pairs(c) do total[s] = total[s] + v end
    bad = bad + t:get("unexpected")
  end
  local e = summary.errors
  io.write(string.format("RESULT requests=%d s200=%d s400=%d s401=%d s404=%d unexpected=%d non2xx3xx=%d connect_err=%d read_err=%d write_err=%d timeouts=%d p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, total[200], total[400], total[401], total[404], bad, e.status,
    e.connect, e.read, e.write, e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
