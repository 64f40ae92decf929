-- Heartbeat or drain. ARGV: prefix, id, action (heartbeat|drain), now
-- Returns {'missing'}, {'terminal', state} or {'ok', node}.
local p, id, action = ARGV[1], ARGV[2], ARGV[3]
local key = node_key(p, id)
local state = redis.call('HGET', key, 'state')
if not state then return {'missing'} end
if action == 'heartbeat' then
  redis.call('HSET', key, 'heartbeat', ARGV[4])
else
  if state == 'terminated' or state == 'failed' then return {'terminal', state} end
  redis.call('HSET', key, 'state', 'draining')
  sync(p, id)
end
return {'ok', node_reply(p, id)}
