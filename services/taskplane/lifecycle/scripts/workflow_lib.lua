-- workflow_lib.lua: what a task's ending sets off (its workflow, its webhook), shared by
-- the scripts that end a task (finish, fail, revoke) and the one that revives it
-- (retry_dead). The
-- loader puts it after lib.lua in front of every script. The workflow hash is described
-- in keys.py; the key names of later stages are read from it (built by keys.py at
-- submission: no name is made here).
--
-- Exactly once: a member is counted by the one script that moves its record to a final
-- state (a second ending is refused by may_end before it gets here), so the member that
-- brings ``left`` to 0 is unique, and only it pushes the next stage.

-- The result inside Celery's stored meta ``value`` (JSON text), cut out rather than
-- decoded and encoded again: cjson would turn an empty list into an object. Celery
-- writes ``{"status": ..., "result": R, "traceback": ..., ...}`` (result_extended off),
-- so R runs from the first ``"result": `` to the last ``, "traceback": ``.
local function wf_result(value)
  if value == '' then return 'null' end
  local _, head = string.find(value, '"result": ', 1, true)
  local tail, from = nil, 1
  while true do
    local at = string.find(value, ', "traceback": ', from, true)
    if not at then break end
    tail, from = at, at + 1
  end
  if head and tail and tail > head then return string.sub(value, head + 1, tail - 1) end
  return 'null'
end

-- The error object of a dead letter's JSON (strings only: safe to decode and encode).
local function wf_error(letter)
  local ok, entry = pcall(cjson.decode, letter)
  if ok and type(entry) == 'table' and type(entry['error']) == 'table' then
    return cjson.encode(entry['error'])
  end
  return 'null'
end

-- The member's outcome as the next stage receives it: the result alone, or (a group
-- with ``on: complete``) ``{"state", "result"|"error"}``.
local function wf_outcome(state, output, complete)
  if not complete then return output end
  if state == 'SUCCESS' then return '{"state": "SUCCESS", "result": ' .. output .. '}' end
  if state == 'FAILURE' then return '{"state": "FAILURE", "error": ' .. output .. '}' end
  return '{"state": "' .. state .. '"}'
end

-- Push a held message (see workflows.held_stage): its body, ``'[[' .. input .. rest``,
-- goes in as a JSON string; the enqueue time and a delivery tag of its own are stamped.
-- Returns the message pushed.
local function push_held(template, queue, input, rest, now, tag)
  local msg = template
  local a, b = string.find(msg, '"@@NOW@@"', 1, true)
  msg = string.sub(msg, 1, a - 1) .. now .. string.sub(msg, b + 1)
  a, b = string.find(msg, '"@@TAG@@"', 1, true)
  if a then msg = string.sub(msg, 1, a - 1) .. cjson.encode(tag) .. string.sub(msg, b + 1) end
  a, b = string.find(msg, '"@@BODY@@"', 1, true)
  msg = string.sub(msg, 1, a - 1) .. cjson.encode('[[' .. input .. rest) .. string.sub(msg, b + 1)
  redis.call('LPUSH', queue, msg)
  return msg
end

-- Push stage ``s``'s held message with ``input`` as its first argument. Its record keeps
-- the message and its list until it starts, as submit's does (reconcile.lua).
local function wf_push(wf, s, input, now)
  local h = redis.call('HMGET', wf, 'msg:' .. s, 'queue:' .. s, 'rest:' .. s, 'record:' .. s,
                       'id:' .. s)
  local msg = push_held(h[1], h[2], input, h[3], now, h[5] .. ':' .. now)
  if redis.call('EXISTS', h[4]) == 1 then  -- never a stub record without a state
    redis.call('HSET', h[4], 'message', msg, 'list', h[2])
  end
  local record_ttl = redis.call('HGET', wf, 'ttl:record')
  redis.call('EXPIRE', h[4], record_ttl)
  redis.call('EXPIRE', wf, record_ttl)
end

-- The webhook of a task or workflow (``hash``: its record) that just ended in ``state``:
-- push its delivery message (held in the ``notify`` field: webhook_delivery.py), with
-- the state as the delivery task's first argument. ``rec``: the record as may_end read it
-- (nil: read the field here).
local function notify_end(hash, id, state, now, rec)
  local raw
  if rec then raw = rec.notify else raw = redis.call('HGET', hash, 'notify') end
  if not raw then return end
  local n = cjson.decode(raw)
  push_held(n['msg'], n['queue'], '"' .. state .. '"', n['rest'], now,
            id .. ':' .. state .. ':' .. now)
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
  redis.call('HINCRBY', redis.call('HGET', wf, 'k:totals'), state, 1)
  notify_end(wf, redis.call('HGET', wf, 'id'), state, now)
end

-- Count the member ``record`` (task ``id``, just ended in ``state``) in its workflow, if it has one;
-- the last member of a stage pushes the next stage or ends the workflow. ``output`` is
-- the member's result as JSON (SUCCESS), its error object (FAILURE), or ''.
local function end_member(record, id, state, output, now, rec)
  local m = rec and rec.wf or redis.call('HMGET', record, 'wf_key', 'stage', 'position')
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
  local following = redis.call('HGET', wf, 'record:' .. (stage + 1))
  if is_final(redis.call('HGET', following, 'state')) then  -- revoked while held (cancel)
    wf_close(wf, stage, 'REVOKED', 'a later step was revoked: the workflow stopped', now)
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

-- A member's FAILURE is retried from the dead letters (retry_dead): un-count it, and if
-- it had stopped the workflow, reopen the workflow and the stages it revoked, so the
-- batch can still complete and the chain goes on. Returns the record's workflow fields
-- and webhook (to write on the record that replaces it), or an empty list.
local function revive_member(record, id, now)
  local m = redis.call('HMGET', record, 'workflow', 'wf_key', 'stage', 'position', 'notify')
  local kept = m[5] and {'notify', m[5]} or {}
  local wf = m[2]
  if not wf or redis.call('EXISTS', wf) == 0 then return kept end
  local fields = {'workflow', m[1], 'wf_key', wf, 'stage', m[3], 'position', m[4], unpack(kept)}
  if redis.call('HGET', record, 'state') ~= 'FAILURE' then return fields end
  redis.call('HINCRBY', wf, 'n:FAILURE', -1)
  local w = redis.call('HMGET', wf, 'state', 'stage', 'kind', 'on', 'cause_id')
  if tonumber(w[2]) ~= tonumber(m[3]) then return fields end
  redis.call('HINCRBY', wf, 'left', 1)
  local complete = w[3] == 'group' and tonumber(m[3]) == 0 and w[4] == 'complete'
  if complete then
    redis.call('HDEL', wf, 'out:' .. m[4])
  elseif tonumber(redis.call('HINCRBY', wf, 'bad', -1)) <= 0 then
    redis.call('HDEL', wf, 'cause', 'cause_id', 'bad')
  end
  if w[1] == 'RUNNING' then return fields end
  local h = redis.call('HMGET', wf, 'stages', 'k:open', 'k:revoked', 'ttl:record')
  local revoked = cjson.decode(h[3])
  for s = tonumber(m[3]) + 1, tonumber(h[1]) - 1 do
    local later = redis.call('HGET', wf, 'record:' .. s)
    local later_id = redis.call('HGET', wf, 'id:' .. s)
    if redis.call('HGET', later, 'state') == 'REVOKED' and redis.call('HGET', later, 'reason') then
      redis.call('HSET', later, 'state', 'PENDING')
      redis.call('HDEL', later, 'finished_at', 'reason')
      redis.call('EXPIRE', later, h[4])
      redis.call('ZADD', h[2], now, later_id)
      for _, key in ipairs(revoked) do redis.call('ZREM', key, later_id) end
      redis.call('HINCRBY', wf, 'n:REVOKED', -1)
    end
  end
  redis.call('HSET', wf, 'state', 'RUNNING')
  redis.call('HDEL', wf, 'finished_at', 'reason')
  redis.call('EXPIRE', wf, h[4])
  return fields
end

-- Everything a task's ending sets off, in the script that ends it: its webhook, and its
-- count in its workflow (which may push the next stage or end the workflow). ``rec``: the
-- record's fields as may_end read them, before the ending (which changes none of these).
local function after_end(record, id, state, output, now, rec)
  notify_end(record, id, state, now, rec)
  end_member(record, id, state, output, now, rec)
end
