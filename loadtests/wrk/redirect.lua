-- Redirects with an exact click count. Until BENCH_MEASURE seconds after its first request
-- each connection asks for a real code (a click); after that it asks for a code that cannot
-- exist (404, no click) until wrk stops, so no click request is in flight when wrk ends and
-- abandons its connections. The 302s counted in response() are then exactly the clicks the
-- service must have recorded.
--   BENCH_CODES_PREFIX + n (n = 1..BENCH_CODES_COUNT): a different code per request (cold),
--   or BENCH_CODE: one code (hot).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local code = os.getenv("BENCH_CODE")
local prefix = os.getenv("BENCH_CODES_PREFIX")
local ncodes = tonumber(os.getenv("BENCH_CODES_COUNT") or "0")
local host_header = os.getenv("BENCH_HOST_HEADER")
local headers = {["User-Agent"] = "shortener-bench"}
if host_header then headers["Host"] = host_header end
local nthreads, next_n = 1, 0

function init(args)
  nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  next_n = thread_index + 1
end

function request()
  if not measuring() then
    return wrk.format("GET", UNCOUNTED, headers)
  end
  if prefix then
    local n = next_n
    next_n = next_n + nthreads
    if n > ncodes then wrapped = true; n = ((n - 1) % ncodes) + 1 end
    return wrk.format("GET", "/" .. prefix .. n, headers)
  end
  return wrk.format("GET", "/" .. code, headers)
end

response = counting_response
