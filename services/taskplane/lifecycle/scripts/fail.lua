-- fail: end the task as FAILURE and file its dead letter, freeing the tenant's slot, in
-- one step. A final state is never overwritten.
--
-- KEYS  record        the task's record
--       open          the tenant's unfinished tasks
--       dead          the task's dead letter
--       dead_index x2 the tenant's and every tenant's dead-letter index
--       failed x1     the tenant's index of tasks ended in FAILURE (lib.lua ENDED)
--       result        Celery's result key                (only when value ~= '')
-- ARGV  id, now, result ttl (the record's lifetime once final), tenant (the caller's
--       guess), run_ended ('1'/'0', as finish), letter (the dead letter's JSON object,
--       without the record's fields), letter_ttl, value (the FAILURE result; '' for
--       none), value_ttl, keep (index lifetime).
-- Precondition  (lib.lua may_end) the record exists, is the tenant's and has not ended.
-- Writes  the record (FAILURE), open set, FAILURE indexes, the dead letter with the
--       record's tenant, queue, priority, retries and submission time, both dead-letter
--       indexes, the result; the ending in its workflow and its webhook
--       (workflow_lib.lua after_end).
-- Returns {outcome, detail} as finish does.

local record, open, dead = KEYS[1], KEYS[2], KEYS[3]
local dead_indexes = keys_from(4, 2)
local failed = keys_from(6, ENDED)
local id, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local tenant, run_ended = ARGV[4], ARGV[5]
local letter, letter_ttl = ARGV[6], tonumber(ARGV[7])
local value, value_ttl, keep = ARGV[8], ARGV[9], ARGV[10]
local result
if value ~= '' then result = KEYS[6 + ENDED] end

local refused, current, rec = may_end(record, result, value, value_ttl, tenant, run_ended,
                                     true)
if refused then return refused end
local r = {rec.queue, rec.priority, rec.retries, rec.submitted}
-- letter is a JSON object from the caller: append the record's fields as text
-- (decoding and encoding it again would turn an empty list into an object).
local entry = string.sub(letter, 1, -2) .. ',"tenant":' .. cjson.encode(tenant)
  .. ',"queue":' .. cjson.encode(r[1] or '') .. ',"priority":' .. (tonumber(r[2]) or 0)
  .. ',"retries":' .. (tonumber(r[3]) or 0) .. ',"submitted_at":' .. (r[4] or '0') .. '}'
close(record, open, failed, id, 'FAILURE', now, ttl, keep, rec)
after_end(record, id, 'FAILURE', wf_error(letter), now, rec)
redis.call('SET', dead, entry, 'EX', letter_ttl)
for _, key in ipairs(dead_indexes) do
  redis.call('ZADD', key, now, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', tonumber(now) - letter_ttl)
  redis.call('EXPIRE', key, letter_ttl)
end
-- may_end found the record not ended: neither is the result (lib.lua write_result)
if result then write_result(result, value, value_ttl, true) end
return {'done', current or ''}
