-- schedule_delete: remove a stored schedule and its fire state together, so no state
-- outlives its schedule (schedule_advance refuses to bring it back).
--
-- KEYS  schedules     the stored schedules' hash
--       state         the schedule's fire state
-- ARGV  ident (``tenant/name``)
-- Writes  deletes the schedule's field and its state.
-- Returns 1 if the schedule existed, else 0.

local schedules, state = KEYS[1], KEYS[2]
local ident = ARGV[1]

local removed = redis.call('HDEL', schedules, ident)
redis.call('DEL', state)
return removed
