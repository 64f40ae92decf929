-- ARGV: prefix, id, running, waiting, kv_cache_usage, scraped_at. A gone node is ignored.
local key = node_key(ARGV[1], ARGV[2])
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'load_running', ARGV[3], 'load_waiting', ARGV[4], 'load_kv', ARGV[5],
  'load_at', ARGV[6], 'load_stale', 0)
redis.call('ZADD', sampled_key(ARGV[1], redis.call('HGET', key, 'model')), ARGV[6], ARGV[2])
sync(ARGV[1], ARGV[2])
return 1
