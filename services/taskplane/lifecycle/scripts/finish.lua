-- finish: end the task in a final state (SUCCESS, REVOKED, FAILURE without a dead
-- letter), or only count its run as ended. Result, record and tenant slot change
-- together; a final state is never overwritten.
--
-- KEYS  record        the task's record
--       open          the tenant's unfinished tasks      (only when state ~= '')
--       ended x2      the tenant's and every tenant's index of tasks ended in state
--                                                        (only when state ~= '')
--       result        Celery's result key                (only when value ~= '')
-- ARGV  id, now, result ttl (the record's lifetime once final), state ('' counts the run
--       only), tenant (the caller's guess), run_ended ('1': count a run of this process
--       as ended, whatever else happens), value (the result; '' for none), value_ttl,
--       keep (index lifetime).
-- Precondition  (lib.lua may_end) the record exists, is the tenant's and has not ended.
-- Writes  the record (state, finished_at, ttl), open set, ended indexes, the result.
-- Returns {outcome, detail}: done (detail: the state it had) | missing | final (detail:
--       the state it already had) | tenant (detail: the real tenant; call again with it).

local record = KEYS[1]
local id = ARGV[1]
local now = ARGV[2]
local ttl = ARGV[3]
local state = ARGV[4]
local tenant = ARGV[5]
local run_ended = ARGV[6]
local value = ARGV[7]
local value_ttl = ARGV[8]
local keep = ARGV[9]
local open, ended, result
if state ~= '' then open, ended = KEYS[2], keys_from(3, 2) end
if value ~= '' then result = KEYS[state ~= '' and 5 or 2] end

local refused, current = may_end(record, result, value, value_ttl, tenant, run_ended)
if refused then return refused end
if state == '' then return {'done', current or ''} end
close(record, open, ended, id, state, now, ttl, keep)
if result then write_result(result, value, value_ttl) end
return {'done', current or ''}
