-- write: store a result state that does not end the task (STARTED stored apart,
-- PROGRESS, RETRY), with record fields that go with it (RETRY's retry count).
--
-- KEYS  result        Celery's result key
--       record        the task's record
-- ARGV  value, ttl (0: none), the record's field/value pairs to set...
-- Precondition  neither the record nor the stored result is final.
-- Writes  the result (published); the fields, if the record exists.
-- Returns 1 if written, else 0.

local result, record = KEYS[1], KEYS[2]
local value = ARGV[1]
local ttl = ARGV[2]
local fields = args_from(3)

if is_final(redis.call('HGET', record, 'state')) then return 0 end
local written = write_result(result, value, ttl)
if written == 1 and #fields > 0 and redis.call('EXISTS', record) == 1 then
  redis.call('HSET', record, unpack(fields))
end
return written
