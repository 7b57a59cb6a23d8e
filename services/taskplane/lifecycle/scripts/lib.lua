-- lib.lua: the Lua every lifecycle script shares. The loader (scripts.py) puts this
-- file in front of each script, so its functions are locals of that script. Nothing
-- here runs by itself, and no function builds a key name: keys come from KEYS.

local FINAL = {SUCCESS = true, FAILURE = true, REVOKED = true}

-- Whether ``s`` is a state a task never leaves (HGET gives false for a missing field).
local function is_final(s) return s ~= nil and s ~= false and FINAL[s] == true end

-- Whether the Celery result stored at ``key`` holds a final state.
local function result_is_final(key)
  local current = redis.call('GET', key)
  if not current then return false end
  local ok, meta = pcall(cjson.decode, current)
  return ok and type(meta) == 'table' and is_final(meta['status'])
end

-- Store and publish the Celery result ``value`` at ``key`` unless the stored result is
-- final (``ttl`` 0: no expiry). Returns 1 if written, else 0.
local function write_result(key, value, ttl)
  if result_is_final(key) then return 0 end
  if tonumber(ttl) > 0 then redis.call('SET', key, value, 'EX', ttl)
  else redis.call('SET', key, value) end
  redis.call('PUBLISH', key, value)
  return 1
end

-- The precondition every ending shares: the record exists (else only the result, if
-- given, is written), belongs to ``tenant`` and has not ended; the run is counted as
-- ended first when ``run_ended`` is '1'. Returns a refusal reply, or nil and the state.
local function may_end(record, result, value, ttl, tenant, run_ended)
  if redis.call('EXISTS', record) == 0 then
    if result and value ~= '' then write_result(result, value, ttl) end
    return {'missing', ''}
  end
  local real = redis.call('HGET', record, 'tenant') or ''
  if real ~= tenant then return {'tenant', real} end
  if run_ended == '1' then redis.call('HINCRBY', record, 'runs_ended', 1) end
  local current = redis.call('HGET', record, 'state')
  if is_final(current) then return {'final', current} end
  return nil, current
end

-- Add ``id`` to a listing index scored by ``score`` (its submission time); entries older
-- than ``keep`` seconds (no record lives that long) go, and the index lives ``keep``.
local function index(key, id, score, now, keep)
  redis.call('ZADD', key, score, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', tonumber(now) - tonumber(keep))
  redis.call('EXPIRE', key, keep)
end

-- Create the record of a task that waits to run: PENDING with ``fields`` (a list of
-- field/value pairs), in the tenant's ``open`` set and every listing index of ``listed``.
local function open_record(record, open, listed, id, now, ttl, keep, fields)
  redis.call('HSET', record, 'state', 'PENDING', unpack(fields))
  redis.call('EXPIRE', record, ttl)
  redis.call('ZADD', open, now, id)
  redis.call('EXPIRE', open, ttl)
  for _, key in ipairs(listed) do index(key, id, now, now, keep) end
end

-- Whether the tenant's ``open`` set has room under ``cap`` (0: no cap), once entries older
-- than ``ttl`` seconds (whose records expired) are dropped.
local function has_room(open, now, ttl, cap)
  redis.call('ZREMRANGEBYSCORE', open, '-inf', now - ttl)
  return cap <= 0 or redis.call('ZCARD', open) < cap
end

-- Mark the record final: stamp it, keep it for the result TTL, free the tenant's slot,
-- list it among the tasks that ended in ``state`` (``ended``: the tenant's index and
-- every tenant's).
local function close(record, open, ended, id, state, now, ttl, keep)
  redis.call('HSET', record, 'state', state, 'finished_at', now)
  redis.call('EXPIRE', record, ttl)
  redis.call('ZREM', open, id)
  local submitted = redis.call('HGET', record, 'submitted_at') or now
  for _, key in ipairs(ended) do index(key, id, submitted, now, keep) end
end

-- Spend one token of the bucket at ``bucket``: ``rate`` tokens a second up to ``burst``,
-- on Redis' clock. Returns whether a token was granted, and the tokens left.
local function take_token(bucket, rate, burst)
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
  local b = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens = tonumber(b[1]) or burst
  local at = tonumber(b[2]) or clock
  tokens = math.min(burst, tokens + math.max(0, clock - at) * rate)
  local granted = tokens >= 1
  if granted then tokens = tokens - 1 end
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', tostring(clock))
  redis.call('EXPIRE', bucket, math.ceil(burst / rate) + 1)
  return granted, tokens
end

-- The keys ``KEYS[first..]`` as a list of ``count``.
local function keys_from(first, count)
  local out = {}
  for i = first, first + count - 1 do out[#out + 1] = KEYS[i] end
  return out
end

-- ARGV from ``first`` on, as a list (field/value pairs a script writes as given).
local function args_from(first)
  local out = {}
  for i = first, #ARGV do out[#out + 1] = ARGV[i] end
  return out
end
