-- ARGV: prefix, id. Removes the node and forgets its leases; 0 when it was not registered.
local p, id = ARGV[1], ARGV[2]
local key = node_key(p, id)
local model, region = unpack(redis.call('HMGET', key, 'model', 'region'))
if not model then return 0 end
unindex(p, id, model, region)
redis.call('ZREM', sampled_key(p, model), id)
for _, lease in ipairs(redis.call('SMEMBERS', leases_key(p, id))) do
  redis.call('HDEL', p .. 'lease_node', lease)
  redis.call('ZREM', p .. 'lease_expiry', lease)
end
redis.call('DEL', key, leases_key(p, id))
redis.call('SREM', p .. 'nodes', id)
redis.call('SREM', p .. 'model:' .. model, id)
return 1
