-- schedule_create: store a new schedule of a tenant, under the tenant's cap.
--
-- KEYS  schedules     the stored schedules' hash (field ``tenant/name``)
-- ARGV  ident (``tenant/name``), definition (JSON), tenant, cap (the most schedules a
--       tenant may store; 0: no cap)
-- Precondition  the tenant has no schedule of that name, and fewer than cap.
-- Writes  the schedule's field.
-- Returns created | exists | cap_reached.

local schedules = KEYS[1]
local ident = ARGV[1]
local definition = ARGV[2]
local prefix = ARGV[3] .. '/'
local cap = tonumber(ARGV[4])

if redis.call('HEXISTS', schedules, ident) == 1 then return 'exists' end
if cap > 0 then
  local count = 0
  for _, field in ipairs(redis.call('HKEYS', schedules)) do
    if string.sub(field, 1, #prefix) == prefix then count = count + 1 end
  end
  if count >= cap then return 'cap_reached' end
end
redis.call('HSET', schedules, ident, definition)
return 'created'
