-- scheduler_release: give the scan lease up (a replica that stops).
--
-- KEYS  lease         the scan lease
-- ARGV  holder (the replica's name)
-- Precondition  the caller holds the lease.
-- Writes  deletes the lease.
-- Returns 1 if released, else 0.

local lease = KEYS[1]
local holder = ARGV[1]

if redis.call('GET', lease) == holder then return redis.call('DEL', lease) end
return 0
