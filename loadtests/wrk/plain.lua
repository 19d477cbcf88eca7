-- A fixed request (wrk's fast path: no Lua per request); only the summary is printed.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
