-- start: a worker is about to run the task. A revoked or finished task never runs
-- again; the run is counted (poison detection) and STARTED stored.
--
-- KEYS  record        the task's record
--       open          the adopted record's tenant's unfinished tasks
--                                                        (only when adopt_ttl > 0)
--       listed x2     the listing index of the record to adopt and its registry
--                     (keys.listing_keys)
--                                                        (only when adopt_ttl > 0)
--       result        Celery's result key                (only when started ~= '')
-- ARGV  now, retries (the run's retry count), started (the STARTED result to store; ''
--       for none), started_ttl, adopt_ttl (ttl of the record to create for a task
--       sent around the API; 0: adopt none), keep (index lifetime), id, hold (the run
--       lease, seconds: HA only, else 0), token (this start's own, unique: a call repeated
--       after a lost reply is known by it), the adopted record's field/value pairs...
-- Precondition  the record exists and has not ended. A task without a record (sent
--       around the API: a stock Celery client, ``celery call``) runs, and is adopted
--       under the system tenant when adopt_ttl > 0.
-- Run lease (hold > 0: Redis HA, where a failover can hand a message that reached only
--       the dead master to a second worker while the first still runs it): a record
--       STARTED by a run that has not ended, whose worker renewed ``run_seen`` (at start,
--       then renew_runs.lua every LEASE_INTERVAL) less than ``hold`` seconds ago, is
--       another live run's: this delivery is refused (postponed) and nothing written;
--       unless the run is this very start (``run_by`` = token), whose reply was lost:
--       answered as it was, nothing written again.
-- Writes  the record: STARTED, started_at, retries, runs_started + 1, run_seen and run_by
--       (hold > 0),
--       no longer the message submit kept (reconcile.lua); the result. An
--       adopted record also enters its tenant's open set (every unfinished task is
--       there: the listing of unfinished states reads it) and the listing indexes.
-- Returns {verdict, died}: run | unknown (there was no record; run it) | REVOKED |
--       SUCCESS | FAILURE (do not run) | running (a live run holds the lease: do not run
--       now; died is then the seconds until that lease lapses, as a string); died:
--       earlier runs that never ended.

local record = KEYS[1]
local now, retries = ARGV[1], ARGV[2]
local started, started_ttl = ARGV[3], ARGV[4]
local adopt_ttl, keep, id, hold = tonumber(ARGV[5]), ARGV[6], ARGV[7], tonumber(ARGV[8])
local token, adopted = ARGV[9], args_from(10)
local lease = hold > 0 and {'run_seen', now, 'run_by', token} or {}
local open, listed, result
if adopt_ttl > 0 then open, listed = KEYS[2], keys_from(3, LISTED) end
if started ~= '' then result = KEYS[listed and 3 + LISTED or 2] end

-- one read for what was four (EXISTS, HGET state, HGET runs_ended, the HINCRBY of
-- runs_started): every record has a state, so a missing state is a missing record
local seen = redis.call('HMGET', record, 'state', 'runs_ended', 'runs_started', 'run_seen',
                        'run_by', 'finished_at', 'message', 'list', 'lost_seen')
local state = seen[1]
if not state then
  if listed then
    for _, v in ipairs(lease) do adopted[#adopted + 1] = v end
    redis.call('HSET', record, 'state', 'STARTED', 'started_at', now, 'retries', retries,
               'runs_started', 1, unpack(adopted))
    redis.call('EXPIRE', record, adopt_ttl)
    redis.call('ZADD', open, now, id)
    redis.call('EXPIRE', open, keep)
    list_task(listed, id, now, now, keep, false)
  end
  if result then write_result(result, started, started_ttl) end
  return {'unknown', 0}
end
if is_final(state) then return {state, 0} end
local ended = tonumber(seen[2] or '0')
local runs_started = tonumber(seen[3] or '0')
if hold > 0 and state == 'STARTED' and seen[4] and runs_started > ended then
  if seen[5] == token then return {'run', runs_started - 1 - ended} end
  local left = hold - (tonumber(now) - tonumber(seen[4]))
  if left > 0 then return {'running', tostring(left)} end
end
local runs = runs_started + 1
redis.call('HSET', record, 'state', 'STARTED', 'started_at', now, 'retries', retries,
           'runs_started', runs, unpack(lease))
-- the fields a run no longer has, dropped only when there (most records hold none: one
-- command less per run)
local drop = {}
for i, field in ipairs({'finished_at', 'message', 'list', 'lost_seen'}) do
  if seen[5 + i] then drop[#drop + 1] = field end
end
if #drop > 0 then redis.call('HDEL', record, unpack(drop)) end
-- the record exists and has not ended: neither has the result (lib.lua write_result)
if result then write_result(result, started, started_ttl, true) end
return {'run', runs - 1 - ended}
