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
-- final (``ttl`` 0: no expiry). Returns 1 if written, else 0. ``unended``: the caller read
-- the task's record and it has not ended, so the result has not either (one result store:
-- a final result is only written with its record's ending, in the same script, and
-- retry_dead deletes it with the record it replaces); the GET is then skipped.
local function write_result(key, value, ttl, unended)
  if not unended and result_is_final(key) then return 0 end
  if tonumber(ttl) > 0 then redis.call('SET', key, value, 'EX', ttl)
  else redis.call('SET', key, value) end
  redis.call('PUBLISH', key, value)
  return 1
end

-- The precondition every ending shares: the record exists (else only the result, if
-- given, is written), belongs to ``tenant`` and has not ended; the run is counted as
-- ended first when ``run_ended`` is '1'. Returns a refusal reply, or nil, the state and
-- what the ending goes on to read of the record (``rec``: one HMGET instead of a read
-- per field, each a command of its own inside the script). With ``defer`` the run's end
-- is not written here but put in ``rec.extra`` for close() to write with the state.
-- A run never counts more ends than starts: the run that ends may have started before
-- ``retry_dead`` began the task afresh (its failure was filed, then task_postrun counts
-- its end; or a redelivered twin ran on), and the new record's counts are not its own.
local function may_end(record, result, value, ttl, tenant, run_ended, defer)
  local r = redis.call('HMGET', record, 'tenant', 'state', 'runs_started', 'runs_ended',
                       'submitted_at', 'notify', 'wf_key', 'stage', 'position', 'queue',
                       'priority', 'retries')
  -- every record has a tenant and a state: neither, and the record is (nearly surely) gone
  if not r[1] and not r[2] and redis.call('EXISTS', record) == 0 then
    if result and value ~= '' then write_result(result, value, ttl) end
    return {'missing', ''}
  end
  local real = r[1] or ''
  if real ~= tenant then return {'tenant', real} end
  local rec = {submitted = r[5], notify = r[6], wf = {r[7], r[8], r[9]}, queue = r[10],
               priority = r[11], retries = r[12], extra = {}}
  local current = r[2]
  if run_ended == '1' then
    local ended = tonumber(r[4]) or 0
    if ended < (tonumber(r[3]) or 0) then
      if defer and not is_final(current) then rec.extra = {'runs_ended', ended + 1}
      else redis.call('HSET', record, 'runs_ended', ended + 1) end
    end
  end
  if is_final(current) then return {'final', current} end
  return nil, current, rec
end

-- How many KEYS each script that lists a task takes for it (keys.listing_keys): its
-- tenant's listing index, and the registry of those indexes (a set of their names, which
-- an operator's listing of every tenant merges: list_task).
local LISTED = 2
-- How many indexes of tasks ended in a state a task's ending enters it in
-- (keys.ended_index_keys: its tenant's only).
local ENDED = 1

-- How often a write to a listing index also trims it: one write in TRIM_EVERY, chosen by
-- the write's millisecond (``now``, an argument, so replicas and the AOF see the same).
local TRIM_EVERY = 16

-- Add ``id`` to a listing index scored by ``score`` (its submission time); the index lives
-- ``keep`` seconds after its last write. Entries older than ``keep`` (no record lives that
-- long) go on one write in TRIM_EVERY: a trim per write cost a command per index per task
-- and listed nothing less, since a listing read drops every entry whose record is gone
-- (listing.py) and skips such old entries anyway. So a busy index holds at most about
-- TRIM_EVERY writes' worth of dead entries more than before, and an idle one still expires.
local function index(key, id, score, now, keep)
  redis.call('ZADD', key, score, id)
  if math.floor(tonumber(now) * 1000) % TRIM_EVERY == 0 then
    redis.call('ZREMRANGEBYSCORE', key, '(-inf', tonumber(now) - tonumber(keep))
  end
  redis.call('EXPIRE', key, keep)
end

-- A task's sorted sets (the open set, the listing and ended indexes) get their TTL once
-- per MARK_PERIOD seconds rather than at every write (issue 29: an EXPIRE a set per task).
-- The write that enters a task also enters the period's mark, a member scored -inf named
-- MARK .. the period's number: when the mark was not there yet (ZADD answers 2), the set
-- is new or this is the period's first write, and only then the TTL is set, to ``ttl`` +
-- MARK_PERIOD, and the previous period's mark dropped (a set holds one mark). So a set
-- still outlives its last write by ``ttl`` at least, and one no one writes still expires.
-- Readers and trims skip the marks: they take scores above -inf (``(-inf``), and no task
-- id starts with MARK. Only for an id surely not in the set yet (``fresh``); an id
-- written again (a dead letter retried, a task adopted) takes the EXPIRE as before.
local MARK_PERIOD = 600
local MARK = 'taskplane:mark:'

-- Returns whether the TTL was set (the period's first write, or not ``fresh``).
local function enter(key, id, score, now, ttl, fresh)
  if fresh then
    local mark = MARK .. math.floor(tonumber(now) / MARK_PERIOD)
    if redis.call('ZADD', key, score, id, '-inf', mark) == 2 then
      -- the period's first write (or the set's): the TTL is set, the old mark goes
      redis.call('ZREMRANGEBYSCORE', key, '-inf', '-inf')
      redis.call('ZADD', key, '-inf', mark)
      redis.call('EXPIRE', key, tonumber(ttl) + MARK_PERIOD)
      return true
    end
    return false
  end
  redis.call('ZADD', key, score, id)
  redis.call('EXPIRE', key, ttl)
  return true
end

-- ``index`` for an id surely not in the index yet: the TTL set once a MARK_PERIOD (enter).
-- Returns whether it was set.
local function index_fresh(key, id, score, now, keep)
  if math.floor(tonumber(now) * 1000) % TRIM_EVERY == 0 then
    redis.call('ZREMRANGEBYSCORE', key, '(-inf', tonumber(now) - tonumber(keep))
  end
  return enter(key, id, score, now, keep, true)
end

-- Enter a task in its tenant's listing index (``listed``: the KEYS keys.listing_keys
-- gives, lib.lua LISTED), scored by ``score`` (its submission time). The index's name is
-- put in the registry of listing indexes whenever its TTL is set (once a MARK_PERIOD
-- for a fresh id; on every write for others): an operator's listing of every tenant
-- merges the registered indexes (listing.py), where an index of every tenant's tasks
-- cost each submission a ZADD into a set of every task (issue 29). The registry holds a
-- name per tenant ever listed; a name whose index expired is dropped by the next listing.
local function list_task(listed, id, score, now, keep, fresh)
  local renewed
  if fresh then renewed = index_fresh(listed[1], id, score, now, keep)
  else index(listed[1], id, score, now, keep); renewed = true end
  if renewed then redis.call('SADD', listed[2], listed[1]) end
end

-- Create the record of a task that waits to run: PENDING with ``fields`` (a list of
-- field/value pairs), living ``ttl``, in the tenant's ``open`` set (which lives
-- ``open_age``: see has_room) and every listing index of ``listed``. ``fresh``: the id is
-- new (submit), so in none of them yet (enter).
local function open_record(record, open, listed, id, now, ttl, open_age, keep, fields, fresh)
  redis.call('HSET', record, 'state', 'PENDING', unpack(fields))
  redis.call('EXPIRE', record, ttl)
  enter(open, id, now, now, open_age, fresh)
  list_task(listed, id, now, now, keep, fresh)
end

-- Whether the tenant's ``open`` set has room under ``cap`` (0: no cap), once entries older
-- than ``open_age`` seconds are dropped: the longest an unfinished record lives (its ttl
-- plus the longest countdown), not the caller's own record ttl, or a submission without
-- a countdown would drop a waiting countdown task whose record still lives. The old
-- entries are dropped only when they could matter (the set looks full) and on one call in
-- TRIM_EVERY (as ``index`` trims), not on every submit: an entry only outlives its record
-- when the task never ended, so the set holds few of them.
local function has_room(open, now, open_age, cap)
  now, open_age = tonumber(now), tonumber(open_age)
  local trim = math.floor(now * 1000) % TRIM_EVERY == 0
  -- no cap: always room; the old entries still go, on one call in TRIM_EVERY
  if cap <= 0 then
    if trim then redis.call('ZREMRANGEBYSCORE', open, '(-inf', now - open_age) end
    return true
  end
  -- ZCARD counts the open set's mark (enter) too, so below the cap it surely has room;
  -- at the cap the exact count (ZCOUNT above -inf, O(log n): about 5 µs against 1 on a
  -- set of a few thousand) decides
  if not trim and redis.call('ZCARD', open) < cap then
    return true
  end
  redis.call('ZREMRANGEBYSCORE', open, '(-inf', now - open_age)
  return redis.call('ZCOUNT', open, '(-inf', '+inf') < cap
end

-- Mark the record final: stamp it, keep it for the result TTL, free the tenant's slot,
-- list it among the tasks that ended in ``state`` (``ended``: the tenant's index and
-- every tenant's). ``rec``: what may_end read of the record (nil: read it here).
local function close(record, open, ended, id, state, now, ttl, keep, rec)
  redis.call('HSET', record, 'state', state, 'finished_at', now, unpack(rec and rec.extra or {}))
  redis.call('EXPIRE', record, ttl)
  redis.call('ZREM', open, id)
  local submitted
  if rec then submitted = rec.submitted else submitted = redis.call('HGET', record, 'submitted_at') end
  submitted = submitted or now
  -- a task ends once, and a dead letter's retry takes it out of the FAILURE index: fresh
  for _, key in ipairs(ended) do index_fresh(key, id, submitted, now, keep) end
end

-- Spend one token of the bucket at ``bucket``: ``rate`` tokens a second up to ``burst``,
-- on Redis' clock. Returns whether a token was granted, and the tokens left.
-- The bucket is kept as GCRA keeps one: a string holding the time at which it would be
-- full again (the "theoretical arrival time"), living until then (a missing key is a full
-- bucket). Tokens left at ``clock`` = burst - (full_at - clock) * rate: the same bucket as
-- a hash of tokens and their time, in a GET and a SET ... PX instead of HMGET, HSET and
-- EXPIRE (issue 29).
local function take_token(bucket, rate, burst)
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
  local full_at = math.max(tonumber(redis.call('GET', bucket)) or clock, clock)
  local tokens = burst - (full_at - clock) * rate
  if tokens < 1 then return false, tokens end
  full_at = full_at + 1 / rate
  redis.call('SET', bucket, string.format('%.6f', full_at), 'PX',
             math.max(1, math.ceil((full_at - clock) * 1000)))
  return true, tokens - 1
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
