-- submit: accept a task. A rate token, the Idempotency-Key, the tenant's cap, the
-- record and the message: all written or none. A replayed key returns the first task,
-- never a second one. A first use of a key is one call; a replay is two.
--
-- KEYS  record        the new task's record
--       open          the tenant's unfinished tasks (its cap)
--       queue         the queue list the message goes to
--       listed x2     the tenant's listing index and its registry (keys.listing_keys;
--                     lib.lua LISTED)
--       bucket        the tenant's rate bucket           (only when rate > 0)
--       idem          the Idempotency-Key's hash         (only when fp ~= '')
--       held          the record of the task the key held when the caller read it
--                                                        (only when held_read ~= '')
-- ARGV  id, record ttl, now, cap (0: none), rate (tokens/s, 0: no limit), burst,
--       fp (body fingerprint; '' without a key), idempotency ttl, held_read (the id the
--       key held when the caller read it; '' if none), message, keep (index lifetime),
--       open_age (the longest an unfinished record lives: the open set's pruning age),
--       keep_message ('1': keep the message and its list on the record, for
--       reconcile.lua), the record's field/value pairs...
-- Precondition  the key still holds what the caller read; a token is free; the key is
--       unused or its task's record expired; the id is new; the tenant is under its cap.
-- Writes  the record (PENDING; with keep_message, the message and its list until the
--       task starts),
--       open set, listing indexes, the message, the key.
-- Returns {outcome, id, retry_after}: created | replay (id: the first task) | conflict
--       (the key was used with another body) | rate_limited (retry_after seconds) |
--       cap_reached | stale (the key names another task than the caller said: id is
--       that task; call again passing its record, so this script can see it exists).

local record, open, queue = KEYS[1], KEYS[2], KEYS[3]
local listed = keys_from(4, LISTED)
-- ttl, now and open_age stay the strings they came as: a Lua number passed to redis.call
-- is formatted again (%.17g), about as dear as a short command of its own
local id, ttl, now = ARGV[1], ARGV[2], ARGV[3]
local cap, rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local fp, idem_ttl, held_read = ARGV[7], ARGV[8], ARGV[9]
local message, keep, open_age = ARGV[10], ARGV[11], ARGV[12]
local keep_message, fields = ARGV[13] == '1', args_from(14)
local optional = 3 + LISTED
local bucket, idem, held
if rate > 0 then optional = optional + 1; bucket = KEYS[optional] end
if fp ~= '' then optional = optional + 1; idem = KEYS[optional] end
if held_read ~= '' then optional = optional + 1; held = KEYS[optional] end

if idem then
  local holds = redis.call('HGET', idem, 'id') or ''
  if holds ~= held_read then return {'stale', holds, '0'} end
end
if bucket then
  local granted, tokens = take_token(bucket, rate, burst)
  if not granted then return {'rate_limited', '', tostring((1 - tokens) / rate)} end
end
if held then
  if redis.call('HGET', idem, 'fp') ~= fp then return {'conflict', held_read, '0'} end
  if redis.call('EXISTS', held) == 1 then return {'replay', held_read, '0'} end
  -- the first task's record expired: this request starts afresh under the key
end
if redis.call('EXISTS', record) == 1 then return {'replay', id, '0'} end
if not has_room(open, now, open_age, cap) then return {'cap_reached', '', '0'} end
-- with keep_message, the message and its list are kept on the record until a worker
-- starts the task (start.lua drops them): reconcile.lua pushes it again if a failover
-- loses the message while the record stands. Written with the record's other fields: one
-- HSET, not two. Without (no reconcile pass runs), the record stays small: a field over
-- 64 bytes turns Redis' compact hash encoding into a hash table.
if keep_message then
  fields[#fields + 1] = 'message'
  fields[#fields + 1] = message
  fields[#fields + 1] = 'list'
  fields[#fields + 1] = queue
end
-- the record did not exist: its id is in none of the sets yet (lib.lua enter)
open_record(record, open, listed, id, now, ttl, open_age, keep, fields, true)
redis.call('LPUSH', queue, message)
if idem then
  -- the key's hash has only these two fields: HSET replaces what a used key held
  redis.call('HSET', idem, 'fp', fp, 'id', id)
  redis.call('EXPIRE', idem, idem_ttl)
end
return {'created', id, '0'}
