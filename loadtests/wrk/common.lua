-- Shared by the bench scripts: a monotonic clock, per-thread counters and a done() that
-- prints one JSON line (prefixed BENCH_JSON) with wrk's figures and the counters.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local threads = {}
local thread_count = 0
function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

-- counters of this thread, read by done() through thread:get
counts = {}
function count(status)
  local key = "s" .. status
  counts[key] = (counts[key] or 0) + 1
end
first_request = nil
last_counted = nil

-- The measured window of redirect.lua and create.lua: BENCH_MEASURE seconds from the
-- thread's first request. After it they ask for UNCOUNTED (a 404, no click, no link) until
-- wrk stops, so nothing that counts is in flight when wrk abandons its connections.
UNCOUNTED = "/zzbenchnotacode0"
local measure = tonumber(os.getenv("BENCH_MEASURE") or "10")
local deadline = nil
function measuring()
  local t = now()
  if deadline == nil then
    deadline = t + measure
    first_request = t
  end
  return t < deadline
end

-- Their response(): every answer counted by status; the last counted one timed, so the
-- requests/s are the phase's own answers over the time they took.
function counting_response(status, hdrs, body)
  count(status)
  if status ~= 404 then last_counted = now() end
end

function done(summary, latency, requests)
  local statuses = {}
  local t0, t1 = nil, nil
  for _, thread in ipairs(threads) do
    local c = thread:get("counts") or {}
    for k, v in pairs(c) do statuses[k] = (statuses[k] or 0) + v end
    local a, b = thread:get("first_request"), thread:get("last_counted")
    if a and (t0 == nil or a < t0) then t0 = a end
    if b and (t1 == nil or b > t1) then t1 = b end
  end
  local parts = {}
  for k, v in pairs(statuses) do table.insert(parts, string.format('"%s":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},' ..
    '"statuses":{%s},"counted_seconds":%.3f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, table.concat(parts, ","), (t1 and t0) and (t1 - t0) or 0))
end
