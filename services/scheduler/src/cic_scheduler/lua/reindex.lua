-- ARGV: prefix, waiting weight, kv-cache weight. Rebuilds every model's pick index from the
-- node hashes (at start-up: a registry written before the index existed, or after a crash
-- between versions). Returns the number of nodes.
local p = ARGV[1]
redis.call('HSET', p .. 'weights', 'waiting', tonumber(ARGV[2]), 'kv', tonumber(ARGV[3]))
local ids = redis.call('SMEMBERS', p .. 'nodes')
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', node_key(p, id), 'model', 'load_at', 'load_stale')
  if f[1] and f[2] and f[3] ~= '1' then redis.call('ZADD', sampled_key(p, f[1]), f[2], id) end
  sync(p, id)
end
return #ids
