-- POST /urls with a new original_url each time; counts the answers by status. Like
-- redirect.lua it stops creating after BENCH_MEASURE seconds (then it asks for an unknown
-- code), so the number of 201s is exactly the number of links made.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local run = os.getenv("BENCH_RUN") or "run"
-- The admin key (bench.py passes it): deployments run the keys profile, and an anonymous
-- creation is limited per client address.
local headers = {["Content-Type"] = "application/json", ["User-Agent"] = "shortener-bench",
                 ["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")}
local n = 0

function request()
  if not measuring() then
    return wrk.format("GET", UNCOUNTED, {["User-Agent"] = "shortener-bench"})
  end
  n = n + 1
  local body = string.format('{"original_url":"https://example.com/bench-create/%s/%d/%d","title":"bench"}',
                             run, thread_index, n)
  return wrk.format("POST", "/urls", headers, body)
end

response = counting_response
