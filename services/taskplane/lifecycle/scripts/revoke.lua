-- revoke: a task not yet started never runs; a running one is stopped only when asked
-- (``terminate``: the caller then broadcasts the kill).
--
-- KEYS  record        the task's record
--       open          the tenant's unfinished tasks
--       revoked x1    the tenant's index of REVOKED tasks (lib.lua ENDED)
--       result        Celery's result key                (only when value ~= '')
-- ARGV  id, now, result ttl (the record's lifetime once final), tenant, terminate
--       ('1'/'0'), value (the REVOKED result; '' for none), value_ttl, keep (index
--       lifetime).
-- Precondition  (lib.lua may_end) the record exists, is the tenant's and has not ended;
--       it is PENDING or RETRY, or STARTED with terminate.
-- Writes  the record (REVOKED), open set, REVOKED indexes, the result; the
--       ending in its workflow and its webhook (workflow_lib.lua after_end).
-- Returns {outcome, previous state}: revoked | missing | final | running (STARTED,
--       without terminate) | tenant (as finish).

local record, open = KEYS[1], KEYS[2]
local revoked = keys_from(3, ENDED)
local id, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local tenant, terminate = ARGV[4], ARGV[5]
local value, value_ttl, keep = ARGV[6], ARGV[7], ARGV[8]
local result
if value ~= '' then result = KEYS[3 + ENDED] end

local refused, current, rec = may_end(record, nil, '', 0, tenant, '0')
if refused then return refused end
current = current or 'PENDING'
if current == 'STARTED' and terminate ~= '1' then return {'running', current} end
close(record, open, revoked, id, 'REVOKED', now, ttl, keep, rec)
after_end(record, id, 'REVOKED', '', now, rec)
if result then write_result(result, value, value_ttl) end
return {'revoked', current}
