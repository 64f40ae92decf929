-- ARGV: prefix, id, model, endpoint, state, labels (JSON), now
-- The node hash: model, endpoint, state, labels, heartbeat, breaker (closed|open|half_open),
-- opened_at, trial (the half-open trial's lease id), node_errors, probe_failures, and the last
-- load sample load_running, load_waiting, load_kv, load_at. Registering vouches for the node's
-- health: its breaker closes and its failure counts restart from zero; its leases are kept.
local p, id, model = ARGV[1], ARGV[2], ARGV[3]
local key = node_key(p, id)
local old_model = redis.call('HGET', key, 'model')
if old_model and old_model ~= model then
  redis.call('SREM', p .. 'model:' .. old_model, id)
end
redis.call('HSET', key, 'model', model, 'endpoint', ARGV[4], 'state', ARGV[5],
  'labels', ARGV[6], 'heartbeat', ARGV[7])
close_breaker(key)
redis.call('SADD', p .. 'nodes', id)
redis.call('SADD', p .. 'model:' .. model, id)
return node_reply(p, id)
