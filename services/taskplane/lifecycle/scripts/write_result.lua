-- write_result: store a Celery result on its own (results in another Redis than the
-- records). KEYS result. ARGV value, ttl. Never overwrites a final state.
-- Returns 1 if written, else 0.

local result = KEYS[1]
local value = ARGV[1]
local ttl = ARGV[2]

return write_result(result, value, ttl)
