-- workflow_lib.lua: what a task's ending does to its workflow, shared by the scripts
-- that end a task (finish, fail, revoke) and the one that revives it (retry_dead). The
-- loader puts it after lib.lua in front of every script. The workflow hash is described
-- in keys.py; the key names of later stages are read from it (built by keys.py at
-- submission: no name is made here).
--
-- Exactly once: a member is counted by the one script that moves its record to a final
-- state (a second ending is refused by may_end before it gets here), so the member that
-- brings ``left`` to 0 is unique, and only it pushes the next stage.

-- The member's outcome as the next stage receives it: the result alone, or (a group
-- with ``on: complete``) ``{"state", "result"|"error"}``.
local function wf_outcome(state, output, complete)
  if not complete then return output end
  if state == 'SUCCESS' then return '{"state": "SUCCESS", "result": ' .. output .. '}' end
  if state == 'FAILURE' then return '{"state": "FAILURE", "error": ' .. output .. '}' end
  return '{"state": "' .. state .. '"}'
end

-- Push stage ``s``'s held message with ``input`` as its first argument (see
-- workflows.held_stage: the body goes in as a JSON string, enqueue time stamped).
local function wf_push(wf, s, input, now)
  local h = redis.call('HMGET', wf, 'msg:' .. s, 'queue:' .. s, 'rest:' .. s, 'record:' .. s)
  local msg = h[1]
  local a, b = string.find(msg, '"@@NOW@@"', 1, true)
  msg = string.sub(msg, 1, a - 1) .. now .. string.sub(msg, b + 1)
  a, b = string.find(msg, '"@@BODY@@"', 1, true)
  msg = string.sub(msg, 1, a - 1) .. cjson.encode('[[' .. input .. h[3]) .. string.sub(msg, b + 1)
  redis.call('LPUSH', h[2], msg)
  local record_ttl = redis.call('HGET', wf, 'ttl:record')
  redis.call('EXPIRE', h[4], record_ttl)
  redis.call('EXPIRE', wf, record_ttl)
end

-- End the workflow in ``state``; stages after ``stage`` never run: their records end
-- REVOKED (counted) with ``reason``.
local function wf_close(wf, stage, state, reason, now)
  local h = redis.call('HMGET', wf, 'stages', 'k:open', 'k:revoked', 'ttl:result', 'keep')
  local stages, open, revoked = tonumber(h[1]), h[2], cjson.decode(h[3])
  for s = stage + 1, stages - 1 do
    local record = redis.call('HGET', wf, 'record:' .. s)
    local id = redis.call('HGET', wf, 'id:' .. s)
    if redis.call('EXISTS', record) == 1 and not is_final(redis.call('HGET', record, 'state')) then
      close(record, open, revoked, id, 'REVOKED', now, h[4], h[5])
      redis.call('HSET', record, 'reason', reason)
      redis.call('HINCRBY', wf, 'n:REVOKED', 1)
    end
  end
  redis.call('HSET', wf, 'state', state, 'finished_at', now)
  if reason ~= '' then redis.call('HSET', wf, 'reason', reason) end
  redis.call('EXPIRE', wf, h[4])
end

-- Count the member ``record`` (task ``id``, just ended in ``state``) in its workflow, if it has one;
-- the last member of a stage pushes the next stage or ends the workflow. ``output`` is
-- the member's result as JSON (SUCCESS), its error object (FAILURE), or ''.
local function end_member(record, id, state, output, now)
  local m = redis.call('HMGET', record, 'wf_key', 'stage', 'position')
  local wf = m[1]
  if not wf or redis.call('EXISTS', wf) == 0 then return end
  local stage, position = tonumber(m[2]), m[3]
  redis.call('HINCRBY', wf, 'n:' .. state, 1)
  local w = redis.call('HMGET', wf, 'state', 'stage', 'stages', 'kind', 'on')
  if w[1] ~= 'RUNNING' or tonumber(w[2]) ~= stage then return end
  local complete = w[4] == 'group' and stage == 0 and w[5] == 'complete'
  local last_stage = stage + 1 >= tonumber(w[3])
  if output == '' then output = 'null' end
  if not last_stage then
    redis.call('HSET', wf, 'out:' .. position, wf_outcome(state, output, complete))
  end
  if state ~= 'SUCCESS' and not complete then
    redis.call('HINCRBY', wf, 'bad', 1)
    if not redis.call('HGET', wf, 'cause') then
      redis.call('HSET', wf, 'cause', state, 'cause_id', id)
    end
  end
  if redis.call('HINCRBY', wf, 'left', -1) > 0 then return end
  if tonumber(redis.call('HGET', wf, 'bad') or '0') > 0 then
    local cause = redis.call('HGET', wf, 'cause')
    wf_close(wf, stage, cause, 'a member ended ' .. cause .. ': the workflow stopped', now)
    return
  end
  if last_stage then
    wf_close(wf, stage, 'SUCCESS', '', now)
    return
  end
  local input
  if w[4] == 'group' and stage == 0 then
    local n = tonumber(redis.call('HGET', wf, 'width'))
    local parts, fields = {}, {}
    for i = 0, n - 1 do
      parts[#parts + 1] = redis.call('HGET', wf, 'out:' .. i)
      fields[#fields + 1] = 'out:' .. i
    end
    input = '[' .. table.concat(parts, ', ') .. ']'
    for i = 1, #fields, 1000 do
      redis.call('HDEL', wf, unpack(fields, i, math.min(i + 999, #fields)))
    end
  else
    input = redis.call('HGET', wf, 'out:0')
    redis.call('HDEL', wf, 'out:0')
  end
  redis.call('HSET', wf, 'stage', stage + 1, 'left', 1, 'pushed_at:' .. (stage + 1), now)
  wf_push(wf, stage + 1, input, now)
end
