-- workflow_submit: accept a workflow. The Idempotency-Key, the tenant's cap (one slot
-- per member), every member's record, the workflow hash and its listing, the first
-- stage's messages: all written or none. Later stages' messages are held in the
-- workflow hash, pushed by the script that ends the stage before them.
--
-- KEYS  workflow      the new workflow's hash
--       open          the tenant's unfinished tasks (its cap)
--       listed x2     the tenant's and every tenant's workflow index
--       totals        workflows created and ended (keys.workflow_totals_key)
--       idem          the Idempotency-Key's hash         (only when fp ~= '')
--       held          the workflow hash the key held when the caller read it
--                                                        (only when held_read ~= '')
--       records x n   each member's record, in member order
--       indexes x 2g  g groups of a task's listing index and registry (keys.listing_keys;
--                     LISTED)
--       queues x q    the queue lists first-stage messages go to
-- ARGV  id, now, record ttl, cap (0: none), fp (body fingerprint; '' without a key),
--       idempotency ttl, held_read ('' if none), keep (index lifetime), n, g, q,
--       f (number of workflow field/value pairs), open_age (the open set's pruning
--       age, as submit's), the f pairs, then per member five
--       values: its id, its listing group (1..g), its queue (1..q; 0: held, not
--       pushed), its message ('' when held), its record fields (a JSON list of
--       field/value strings).
-- Precondition  the key still holds what the caller read; the key is unused or its
--       workflow expired; the id is new; the tenant has room for n more tasks.
-- Writes  every member's record (PENDING; a first-stage member's keeps its message and
--       list until it starts, as submit's), open set, listing indexes, the workflow
--       hash (ttl: the record ttl) and both workflow indexes, the totals, first-stage
--       messages, the key.
-- Returns {outcome, id}: created | replay (id: the first workflow) | conflict |
--       cap_reached | stale (as submit.lua: call again with that workflow's key).

local workflow, open = KEYS[1], KEYS[2]
local listed = keys_from(3, 2)
local totals = KEYS[5]
local id = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local fp = ARGV[5]
local idem_ttl = ARGV[6]
local held_read = ARGV[7]
local keep = ARGV[8]
local n, g, q, f = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]),
  tonumber(ARGV[12])
local open_age = tonumber(ARGV[13])
local nk = 5
local idem, held
if fp ~= '' then nk = nk + 1; idem = KEYS[nk] end
if held_read ~= '' then nk = nk + 1; held = KEYS[nk] end
local records = keys_from(nk + 1, n)
local indexes = keys_from(nk + 1 + n, LISTED * g)
local queues = keys_from(nk + 1 + n + LISTED * g, q)
local rest = args_from(14)  -- the f workflow pairs, then five values per member

if idem then
  local holds = redis.call('HGET', idem, 'id') or ''
  if holds ~= held_read then return {'stale', holds} end
end
if held then
  if redis.call('HGET', idem, 'fp') ~= fp then return {'conflict', held_read} end
  if redis.call('EXISTS', held) == 1 then return {'replay', held_read} end
end
if redis.call('EXISTS', workflow) == 1 then return {'replay', id} end
redis.call('ZREMRANGEBYSCORE', open, '(-inf', now - open_age)
-- above -inf: the open set's TTL marks (lib.lua enter) are not tasks
if cap > 0 and redis.call('ZCOUNT', open, '(-inf', '+inf') + n > cap then return {'cap_reached', ''} end

redis.call('HSET', workflow, unpack(rest, 1, 2 * f))
redis.call('EXPIRE', workflow, ttl)
for _, key in ipairs(listed) do index(key, id, now, now, keep) end
redis.call('HINCRBY', totals, 'created', 1)
local at = 2 * f + 1
for m = 1, n do
  local member, group, queue = rest[at], tonumber(rest[at + 1]), tonumber(rest[at + 2])
  local message, fields = rest[at + 3], cjson.decode(rest[at + 4])
  if queue > 0 then
    -- kept until the member starts, as submit keeps it (reconcile.lua)
    fields[#fields + 1] = 'message'; fields[#fields + 1] = message
    fields[#fields + 1] = 'list'; fields[#fields + 1] = queues[queue]
  end
  local first = LISTED * (group - 1)
  open_record(records[m], open, {unpack(indexes, first + 1, first + LISTED)}, member, now, ttl,
              open_age, keep, fields)
  if queue > 0 then redis.call('LPUSH', queues[queue], message) end
  at = at + 5
end
if idem then
  redis.call('DEL', idem)
  redis.call('HSET', idem, 'fp', fp, 'id', id)
  redis.call('EXPIRE', idem, idem_ttl)
end
return {'created', id}
