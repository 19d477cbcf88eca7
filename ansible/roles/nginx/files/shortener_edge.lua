-- The edge: Nginx answers a cached redirect itself (issue 14).
--
-- GET /<code> runs the service's own Redis script (app/redirect_hit.lua, installed next to
-- this file: one copy) over a keep-alive pool: one round trip reads the link and, on a hit,
-- queues its click on the stream the click worker drains. A hit is answered here with the
-- instances' status and headers. Everything else returns to Nginx, which passes the request
-- on to the instances exactly as without the edge: HEAD, a miss, a negative or tombstoned
-- entry, a Location that is not plain ASCII (the instances encode it), any Redis error or
-- timeout, and every request while the breaker is open.
--
-- The request always carries the edge's click id to the instance ($shortener_click_id, sent
-- as X-Shortener-Click-Id): when Redis ran the script but answered too late, the instance
-- queues the same click id again and the database stores the click once.
--
-- The breaker lives in a shared dict, so all workers see it: after `breaker_threshold`
-- consecutive failures the edge stops calling Redis for `breaker_reset` seconds, then lets one
-- request probe it. A dead or hung Redis then costs a visitor nothing: the request goes
-- straight to the instances, which have their own breaker.
--
-- What happened is left in $shortener_edge (hit, miss, negative, tombstone, bypass, error)
-- and $shortener_edge_breaker (closed, open) for the access log, which mtail turns into
-- Prometheus metrics.

local redis = require "nginx.redis"

local ngx = ngx
local byte = string.byte
local char = string.char
local floor = math.floor
local format = string.format

local _M = {}

local conf
local script
local sha
local dict

local function hex(bytes)
    return (bytes:gsub(".", function(c) return format("%02x", byte(c)) end))
end

-- Called from init_by_lua_block with the settings of the nginx role (nginx_edge_*).
function _M.init(settings)
    conf = settings
    local file = assert(io.open(conf.script, "rb"))
    script = file:read("*a")
    file:close()
    sha = hex(ngx.sha1_bin(script))
    conf.reserved_set = {}
    for _, name in ipairs(conf.reserved or {}) do
        conf.reserved_set[name] = true
    end
end

-- --- breaker, shared by all workers ----------------------------------------------------------

local function breaker_allows()
    local open_until = dict:get("open_until")
    if not open_until then
        return true
    end
    if ngx.now() < open_until then
        return false
    end
    -- One probe per pause across all workers: add() succeeds for the first caller only.
    return dict:add("probe", true, conf.breaker_reset) == true
end

local function breaker_success()
    dict:set("failures", 0)
    if dict:get("open_until") then
        dict:delete("open_until")
        dict:delete("probe")
        ngx.log(ngx.WARN, "shortener edge: redis is back, breaker closed")
    end
end

local function breaker_failure(err)
    local failures = dict:incr("failures", 1, 0)
    if dict:get("open_until") or (failures or 0) >= conf.breaker_threshold then
        if not dict:get("open_until") then
            ngx.log(ngx.WARN, "shortener edge: redis unavailable, breaker opened: ", err)
        end
        dict:set("open_until", ngx.now() + conf.breaker_reset)
        dict:delete("probe")
    end
end

-- --- the click's fields ------------------------------------------------------------------

-- One byte as the latin-1 character it is, in UTF-8. A named function, not a closure made on
-- every call: LuaJIT cannot compile a function that makes one (its trace aborts, "NYI:
-- bytecode 50", and header_text stayed interpreted for every request; seen with jit.v).
local function latin1_to_utf8(c)
    local b = byte(c)
    return char(192 + floor(b / 64), 128 + b % 64)
end

-- A header as the stream takes it: at most header_bytes bytes of valid UTF-8. Bytes that are
-- not UTF-8 become the latin-1 characters they are, as the instances store them (WSGI decodes
-- headers as latin-1); app/clicks.py drops control characters and clips the length.
local function header_text(value)
    if type(value) == "table" then
        value = value[1]
    end
    if not value or value == "" then
        return ""
    end
    if #value > conf.header_bytes then
        value = value:sub(1, conf.header_bytes)
        -- Do not leave half a character at the cut.
        value = value:gsub("[\192-\255][\128-\191]*$", "")
    end
    if not value:find("[\128-\255]") then
        return value
    end
    -- With "u", PCRE checks the whole subject is UTF-8 and fails (from nil, err set) if not.
    -- ngx.re.find returns from, to, err: the match's start, not its second value, says valid.
    if ngx.re.find(value, "^", "ujo") then
        return value
    end
    return (value:gsub("[\128-\255]", latin1_to_utf8))
end

-- --- the request ---------------------------------------------------------------------------

local function call_redis(key, args)
    local red = redis:new()
    red:set_timeout(conf.connect_timeout_ms)
    local ok, err = red:connect(conf.redis_host, conf.redis_port, { pool_size = conf.pool_size })
    if not ok then
        return nil, err
    end
    red:set_timeout(conf.timeout_ms)
    if conf.redis_password ~= "" and red:get_reused_times() == 0 then
        if conf.redis_user ~= "" then
            ok, err = red:auth(conf.redis_user, conf.redis_password)
        else
            ok, err = red:auth(conf.redis_password)
        end
        if not ok then
            red:close()
            return nil, err
        end
    end
    local res
    res, err = red:evalsha(sha, 2, key, conf.stream, unpack(args))
    if not res and err and err:find("^NOSCRIPT") then
        -- Redis restarted empty or its scripts were flushed: EVAL caches it again.
        res, err = red:eval(script, 2, key, conf.stream, unpack(args))
    end
    if err and not res then
        -- A Redis error reply (NOPERM, OOM, ...) leaves the connection usable; a socket
        -- error (timeout, closed) does not.
        if err:find("timeout") or err:find("closed") or err:find("broken") then
            red:close()
        else
            red:set_keepalive(conf.pool_idle_ms, conf.pool_size)
        end
        return nil, err
    end
    red:set_keepalive(conf.pool_idle_ms, conf.pool_size)
    return res
end

-- access_by_lua of the short-link location: answers a hit, or returns and Nginx proxies.
function _M.redirect()
    local var = ngx.var
    dict = dict or ngx.shared[conf.dict]
    local click_id = var.request_id:sub(1, 24)
    var.shortener_click_id = click_id
    local code = var.uri:sub(2)
    if ngx.req.get_method() ~= "GET" or conf.reserved_set[code] then
        var.shortener_edge = "bypass"
        return
    end
    if not breaker_allows() then
        var.shortener_edge = "bypass"
        var.shortener_edge_breaker = "open"
        return
    end
    local args = {
        click_id,
        (ngx.utctime():gsub(" ", "T")),
        header_text(var.http_referer),
        header_text(var.http_user_agent),
        code,
        var.shortener_request_id,
        var.remote_addr,
    }
    local value, err = call_redis(conf.key_prefix .. code, args)
    if err then
        breaker_failure(err)
        var.shortener_edge = "error"
        var.shortener_edge_breaker = dict:get("open_until") and "open" or "closed"
        ngx.log(ngx.WARN, "shortener edge: redis call failed, passed on: ", err)
        return
    end
    breaker_success()
    var.shortener_edge_breaker = "closed"
    if value == ngx.null or value == nil then
        var.shortener_edge = "miss"
        return
    elseif value == "-" then
        var.shortener_edge = "negative"
        return
    elseif value == "!" then
        var.shortener_edge = "tombstone"
        return
    end
    local status, location = value:match("^%d+\t%d*\t(%d+)\t(.*)$")
    status = tonumber(status)
    if not status or location:find("[%z\1-\32\127-\255]") then
        -- The instances percent-encode such a target; the click queued above is queued again
        -- there under the same click id and stored once.
        var.shortener_edge = "bypass"
        return
    end
    var.shortener_edge = "hit"
    ngx.status = status
    local header = ngx.header
    header["Location"] = location
    header["Cache-Control"] = "private, no-store"
    header["Content-Type"] = "text/html; charset=utf-8"
    header["Content-Length"] = 0
    -- Headers sent first: ngx.exit(status) would make Nginx add its own HTML body to a 3xx.
    ngx.send_headers()
    return ngx.exit(ngx.HTTP_OK)
end

return _M
