-- finish: end the task in a final state (SUCCESS, REVOKED, FAILURE without a dead
-- letter), or only count its run as ended. Result, record and tenant slot change
-- together; a final state is never overwritten.
--
-- KEYS  record        the task's record
--       open          the tenant's unfinished tasks      (only when state ~= '')
--       ended x1      the tenant's index of tasks ended in state (lib.lua ENDED)
--                                                        (only when state ~= '')
--       listed xN     the listing index of the record to adopt and its registry (N = adopt)
--       result        Celery's result key                (only when value ~= '')
-- ARGV  id, now, result ttl (the record's lifetime once final), state ('' counts the run
--       only), tenant (the caller's guess), run_ended ('1': count a run of this process
--       as ended, whatever else happens), value (the result; '' for none), value_ttl,
--       keep (index lifetime), adopt (how many listing keys follow; 0: adopt none), the
--       adopted record's field/value pairs...
-- Precondition  (lib.lua may_end) the record exists, is the tenant's and has not ended.
--       With adopt > 0 and a state, a missing record is created, ended: a task sent
--       around the API (under the system tenant) that a worker revoked before any
--       worker started it (``celery control revoke``); it lives ttl like any ended one.
-- Writes  the record (state, finished_at, ttl), open set, ended indexes, the result;
--       the ending in its workflow and its webhook (workflow_lib.lua after_end).
-- Returns {outcome, detail}: done (detail: the state it had) | missing | final (detail:
--       the state it already had) | tenant (detail: the real tenant; call again with it)
--       | adopted (there was no record; it was created ended).

local record = KEYS[1]
local id, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local state, tenant, run_ended = ARGV[4], ARGV[5], ARGV[6]
local value, value_ttl, keep = ARGV[7], ARGV[8], ARGV[9]
local adopt, fields = tonumber(ARGV[10]), args_from(11)
local open, ended, listed, result
local next_key = 2
if state ~= '' then open, ended, next_key = KEYS[2], keys_from(3, ENDED), 3 + ENDED end
if adopt > 0 then listed, next_key = keys_from(next_key, adopt), next_key + adopt end
if value ~= '' then result = KEYS[next_key] end

if listed and state ~= '' and redis.call('EXISTS', record) == 0 then
  redis.call('HSET', record, 'state', state, 'finished_at', now, unpack(fields))
  redis.call('EXPIRE', record, ttl)
  list_task(listed, id, now, now, keep, false)
  for _, key in ipairs(ended) do index(key, id, now, now, keep) end
  if result then write_result(result, value, value_ttl) end
  return {'adopted', ''}
end

local refused, current, rec = may_end(record, result, value, value_ttl, tenant, run_ended,
                                     state ~= '')
if refused then return refused end
if state == '' then return {'done', current or ''} end
close(record, open, ended, id, state, now, ttl, keep, rec)
-- may_end found the record not ended: neither is the result (lib.lua write_result)
if result then write_result(result, value, value_ttl, true) end
after_end(record, id, state, wf_result(value), now, rec)
return {'done', current or ''}
