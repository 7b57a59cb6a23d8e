-- schedule_replace: store a changed definition of a stored schedule (PATCH), unless the
-- schedule was deleted meanwhile: a change never brings a deleted schedule back.
--
-- KEYS  schedules     the stored schedules' hash (field ``tenant/name``)
-- ARGV  ident (``tenant/name``), definition (JSON)
-- Precondition  the schedule is stored.
-- Writes  the schedule's field.
-- Returns 1 if replaced, else 0.

local schedules = KEYS[1]
local ident, definition = ARGV[1], ARGV[2]

if redis.call('HEXISTS', schedules, ident) == 0 then return 0 end
redis.call('HSET', schedules, ident, definition)
return 1
