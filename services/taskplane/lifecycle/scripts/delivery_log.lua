-- delivery_log: record one webhook delivery attempt of a task or workflow and, when it
-- was the last (the retry period is over), list the delivery as dead; or (attempt '')
-- take a dead delivery off the lists to retry it.
--
-- KEYS  log           the subject's attempts list
--       dead x2       the tenant's and every tenant's dead-delivery index
-- ARGV  attempt (JSON; '' to revive), member ({kind}:{id}:{state}), dead ('1'/'0'), now,
--       ttl (how long the log lives), keep (at most this many attempts are kept)
-- Precondition  none (attempts are facts); reviving needs the member in the tenant's
--       index.
-- Writes  the log (trimmed, ttl), the dead-delivery indexes.
-- Returns {outcome}: logged | dead | revived | not_dead.

local log = KEYS[1]
local dead = keys_from(2, 2)
local attempt = ARGV[1]
local member = ARGV[2]
local is_dead = ARGV[3]
local now = ARGV[4]
local ttl = ARGV[5]
local keep = tonumber(ARGV[6])

if attempt == '' then
  if redis.call('ZREM', dead[1], member) == 0 then return {'not_dead'} end
  redis.call('ZREM', dead[2], member)
  return {'revived'}
end
redis.call('RPUSH', log, attempt)
redis.call('LTRIM', log, -keep, -1)
redis.call('EXPIRE', log, ttl)
if is_dead ~= '1' then return {'logged'} end
for _, key in ipairs(dead) do
  redis.call('ZADD', key, now, member)
  redis.call('EXPIRE', key, ttl)
end
return {'dead'}
