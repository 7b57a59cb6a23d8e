-- reconcile: bring back the message of an accepted task that a failover dropped. kombu's
-- consumer takes a message off its list (BRPOP) and files it as unacked (HSET) in two
-- steps, and restores an expired lease the other way round (HDEL, then LPUSH): when the
-- master dies between the two and the second step had not reached a replica, the message
-- is nowhere while the task's record (acknowledged at submit) still says PENDING. No
-- worker would ever run it. This script finds such a task, and re-enqueues the message
-- submit kept in the record, only after seeing it nowhere twice, at least ``after``
-- seconds apart: the two-step windows above last milliseconds, so a message merely
-- passing through one is never pushed a second time.
--
-- KEYS  record        the task's record
--       unacked       kombu's hash of delivered, unacknowledged messages
--       target        the list submit pushed the message to (the record's ``list``)
--       lists x n     every priority list of the record's queue (target among them)
-- ARGV  id, now, after (seconds between the two sightings)
-- Precondition  the record is PENDING, keeps its message, and names ``target`` as its
--       list; the message (found by the task id, which every message carries in its
--       headers) is in none of ``lists`` and no unacked entry.
-- Writes  ``lost_seen`` = now at the first sighting; at a second one ``after`` later, the
--       message back onto ``target`` (LPUSH, as submit) and ``lost_seen`` removed. A
--       message found again also removes ``lost_seen``.
-- Cost  one LPOS of the target list from its tail and one pass over the unacked hash;
--       only a message not found there (lost, or restored after a worker's death) costs a
--       scan of every list of its queue.
-- Returns live (not PENDING, or no message kept) | queued | held | suspect (first
--       sighting, or too recent) | requeued | moved (the record names another list).

local record, unacked, target = KEYS[1], KEYS[2], KEYS[3]
local lists = keys_from(4, #KEYS - 3)
local id, now, after = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local seen = redis.call('HMGET', record, 'state', 'message', 'list', 'lost_seen')
if seen[1] ~= 'PENDING' or not seen[2] then return 'live' end
if seen[3] ~= target then return 'moved' end

local function found(where)
  redis.call('HDEL', record, 'lost_seen')
  return where
end

-- cheapest first. An old task's message sits near the tail of its list (LPUSH, consumed
-- from the right): LPOS from the tail finds the bytes submit pushed.
if redis.call('LPOS', target, seen[2], 'RANK', -1) then return found('queued') end
for _, raw in ipairs(redis.call('HVALS', unacked)) do
  if string.find(raw, id, 1, true) then return found('held') end
end
-- a restored message is serialised anew (other bytes, maybe another list): look for its id
for _, list in ipairs(lists) do
  for _, raw in ipairs(redis.call('LRANGE', list, 0, -1)) do
    if string.find(raw, id, 1, true) then return found('queued') end
  end
end

local first = tonumber(seen[4] or '')
if not first or now - first < after then
  if not first then redis.call('HSET', record, 'lost_seen', now) end
  return 'suspect'
end
redis.call('LPUSH', target, seen[2])
redis.call('HDEL', record, 'lost_seen')
return 'requeued'
