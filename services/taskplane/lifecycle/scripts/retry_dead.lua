-- retry_dead: enqueue a dead letter again under its id. Only the caller that removes
-- the dead letter re-enqueues the task, so of concurrent retries exactly one wins.
--
-- KEYS  record        the task's record (replaced by a new PENDING one)
--       open          the tenant's unfinished tasks (its cap)
--       queue         the queue list the message goes to
--       dead          the task's dead letter
--       dead_index x2 the tenant's and every tenant's dead-letter index
--       failed x1     the tenant's index of tasks ended in FAILURE (lib.lua ENDED)
--       listed x2     the tenant's listing index and its registry (keys.listing_keys;
--                     lib.lua LISTED)
--       result        Celery's result key: the old FAILURE goes
-- ARGV  id, record ttl, now, cap (0: none), read (the dead letter as the caller read
--       it), message, keep (index lifetime), open_age (the open set's pruning age, as
--       submit's), the new record's field/value pairs...
-- Precondition  the dead letter is there and is the one read; the tenant is under its
--       cap.
-- Writes  deletes the dead letter, its index entries, its FAILURE index entries and the
--       result; writes the record (PENDING, keeping the message and its list until the
--       task starts, as submit), open set, listing indexes and message;
--       a workflow member is un-counted and its workflow reopened (revive_member).
-- Returns {outcome}: queued | gone (no dead letter: another retry won, or it expired) |
--       changed (not the dead letter read) | cap_reached.

local record, open, queue, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead_indexes = keys_from(5, 2)
local failed = keys_from(7, ENDED)
local listed = keys_from(7 + ENDED, LISTED)
local result = KEYS[7 + ENDED + LISTED]
local id, ttl, now, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local read, message, keep, open_age = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local fields = args_from(9)

local entry = redis.call('GET', dead)
if not entry then return {'gone'} end
if entry ~= read then return {'changed'} end
if not has_room(open, now, open_age, cap) then return {'cap_reached'} end
redis.call('DEL', dead)
for _, key in ipairs(dead_indexes) do redis.call('ZREM', key, id) end
local membership = revive_member(record, id, now)
redis.call('DEL', record)
open_record(record, open, listed, id, now, ttl, open_age, keep, fields)
-- the message kept until the task starts, as submit keeps it (reconcile.lua)
local kept = {'message', message, 'list', queue}
for _, v in ipairs(membership) do kept[#kept + 1] = v end
redis.call('HSET', record, unpack(kept))
for _, key in ipairs(failed) do redis.call('ZREM', key, id) end
redis.call('DEL', result)
redis.call('LPUSH', queue, message)
return {'queued'}
