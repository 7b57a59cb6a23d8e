-- take_token: spend one of a tenant's request tokens (routes that submit nothing; a
-- submit takes its token in submit.lua).
--
-- KEYS  bucket        the tenant's rate bucket
-- ARGV  rate (tokens a second), burst (the most tokens held)
-- Writes  the bucket.
-- Returns {allowed (1/0), seconds until a token is available}.

local bucket = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])

local granted, tokens = take_token(bucket, rate, burst)
if granted then return {1, '0'} end
return {0, tostring((1 - tokens) / rate)}
