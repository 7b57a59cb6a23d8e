-- schedule_advance: move a schedule's last_tick from what the caller read to a later
-- tick, with the counts of what it did on the way, only if nobody moved it meanwhile.
-- fires (tasks this caller's submits created: each tick creates one at most) count
-- either way; skips and misses only with the move, so two replicas never count one twice.
-- A fire is a plain submit under the Idempotency-Key ``schedule {name} {tick}``: that
-- claims the tick; this state only says where each schedule stands.
--
-- KEYS  state         the schedule's fire state
--       schedules     the stored schedules' hash         (only when ident ~= '')
-- ARGV  read (last_tick as the caller read it; '' if none), tick (the new last_tick),
--       task_id (the last task's id; '' keeps it), fired_at ('' keeps it), fires,
--       skipped, missed, ident (the schedule's ``tenant/name`` field in schedules; ''
--       for a schedule declared in code, which has none)
-- Precondition  a stored schedule still exists (a deleted one gets no state back); the
--       state holds ``read``; tick is not older than it.
-- Writes  the state.
-- Returns 1 if moved, else 0.

local state = KEYS[1]
local read, tick = ARGV[1], ARGV[2]
local task_id, fired_at = ARGV[3], ARGV[4]
local fires, skipped, missed = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local ident = ARGV[8]
local schedules
if ident ~= '' then schedules = KEYS[2] end

if schedules and redis.call('HEXISTS', schedules, ident) == 0 then return 0 end
if fires > 0 then redis.call('HINCRBY', state, 'fires', fires) end
local held = redis.call('HGET', state, 'last_tick') or ''
if held ~= read then return 0 end
if read ~= '' and tonumber(tick) < tonumber(read) then return 0 end
redis.call('HSET', state, 'last_tick', tick)
if task_id ~= '' then redis.call('HSET', state, 'last_task_id', task_id) end
if fired_at ~= '' then redis.call('HSET', state, 'last_fired_at', fired_at) end
redis.call('HINCRBY', state, 'skipped', skipped)
redis.call('HINCRBY', state, 'missed', missed)
return 1
