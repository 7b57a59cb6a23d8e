-- scheduler_lease: take the scan lease if free, or renew it if this replica holds it.
--
-- KEYS  lease         the scan lease
-- ARGV  holder (the replica's name), ttl (milliseconds)
-- Precondition  nobody else holds the lease.
-- Writes  the lease.
-- Returns 1 if held by the caller afterwards, else 0.

local lease = KEYS[1]
local holder = ARGV[1]
local ttl = ARGV[2]

local current = redis.call('GET', lease)
if current and current ~= holder then return 0 end
redis.call('SET', lease, holder, 'PX', ttl)
return 1
