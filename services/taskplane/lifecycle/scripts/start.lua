-- start: a worker is about to run the task. A revoked or finished task never runs
-- again; the run is counted (poison detection) and STARTED stored.
--
-- KEYS  record        the task's record
--       listed x6     the listing indexes of the record to adopt (keys.listing_keys)
--                                                        (only when adopt_ttl > 0)
--       result        Celery's result key                (only when started ~= '')
-- ARGV  now, retries (the run's retry count), started (the STARTED result to store; ''
--       for none), started_ttl, adopt_ttl (ttl of the record to create for a task
--       sent around the API; 0: adopt none), keep (index lifetime), id, the adopted
--       record's field/value pairs...
-- Precondition  the record exists and has not ended. A task without a record (sent
--       around the API: a stock Celery client, ``celery call``) runs, and is adopted
--       under the system tenant when adopt_ttl > 0.
-- Writes  the record: STARTED, started_at, retries, runs_started + 1; the result.
-- Returns {verdict, died}: run | unknown (there was no record; run it) | REVOKED |
--       SUCCESS | FAILURE (do not run); died: earlier runs that never ended.

local record = KEYS[1]
local now, retries = ARGV[1], ARGV[2]
local started, started_ttl = ARGV[3], ARGV[4]
local adopt_ttl, keep, id, adopted = tonumber(ARGV[5]), ARGV[6], ARGV[7], args_from(8)
local listed, result
if adopt_ttl > 0 then listed = keys_from(2, 6) end
if started ~= '' then result = KEYS[listed and 8 or 2] end

if redis.call('EXISTS', record) == 0 then
  if listed then
    redis.call('HSET', record, 'state', 'STARTED', 'started_at', now, 'retries', retries,
               'runs_started', 1, unpack(adopted))
    redis.call('EXPIRE', record, adopt_ttl)
    for _, key in ipairs(listed) do index(key, id, now, now, keep) end
  end
  if result then write_result(result, started, started_ttl) end
  return {'unknown', 0}
end
local state = redis.call('HGET', record, 'state')
if is_final(state) then return {state, 0} end
redis.call('HSET', record, 'state', 'STARTED', 'started_at', now, 'retries', retries)
redis.call('HDEL', record, 'finished_at')
local runs = redis.call('HINCRBY', record, 'runs_started', 1)
local ended = tonumber(redis.call('HGET', record, 'runs_ended') or '0')
if result then write_result(result, started, started_ttl) end
return {'run', runs - 1 - ended}
