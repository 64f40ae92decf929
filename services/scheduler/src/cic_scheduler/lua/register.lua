-- ARGV: prefix, id, model, endpoint, state, labels (JSON), now, region (its label, or '')
-- The node hash: model, endpoint, state, labels, heartbeat, breaker (closed|open|half_open),
-- opened_at, trial (the half-open trial's lease id), node_errors, probe_failures, and the last
-- load sample load_running, load_waiting, load_kv, load_at. Registering vouches for the node's
-- health: its breaker closes and its failure counts restart from zero; its leases are kept.
local p, id, model = ARGV[1], ARGV[2], ARGV[3]
local key = node_key(p, id)
local old = redis.call('HMGET', key, 'model', 'region')
if old[1] and old[1] ~= model then
  redis.call('SREM', p .. 'model:' .. old[1], id)
  redis.call('ZREM', sampled_key(p, old[1]), id)
  redis.call('HSET', key, 'load_stale', 1)
end
if old[1] then unindex(p, id, old[1], old[2]) end
redis.call('HSET', key, 'model', model, 'endpoint', ARGV[4], 'state', ARGV[5],
  'labels', ARGV[6], 'heartbeat', ARGV[7], 'region', ARGV[8])
close_breaker(key)
redis.call('SADD', p .. 'nodes', id)
redis.call('SADD', p .. 'model:' .. model, id)
sync(p, id)
return node_reply(p, id)
