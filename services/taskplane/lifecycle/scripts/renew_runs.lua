-- renew_runs: a live worker's runs keep their lease (Redis HA only: start.lua ``hold``).
-- The worker's main process calls it every LEASE_INTERVAL with the tasks its pool runs,
-- beside its renewal of the broker's leases: while ``run_seen`` is fresh, start.lua
-- refuses a second delivery of the task (one a failover brought back while this run
-- goes on); once the worker dies and stops renewing, the lease lapses and it runs.
--
-- KEYS  records x n   the records of the tasks this worker runs
-- ARGV  now
-- Precondition  the record is STARTED by a run that has not ended (a finished, retried or
--       expired record is left alone: HSET must not bring a record back to life).
-- Writes  run_seen = now.
-- Returns how many records were renewed.

local now, renewed = ARGV[1], 0
for _, record in ipairs(KEYS) do
  local seen = redis.call('HMGET', record, 'state', 'runs_started', 'runs_ended')
  if seen[1] == 'STARTED' and tonumber(seen[2] or '0') > tonumber(seen[3] or '0') then
    redis.call('HSET', record, 'run_seen', now)
    renewed = renewed + 1
  end
end
return renewed
