-- ARGV: prefix, id, running, waiting, kv_cache_usage, scraped_at. A gone node is ignored.
local key = node_key(ARGV[1], ARGV[2])
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'load_running', ARGV[3], 'load_waiting', ARGV[4], 'load_kv', ARGV[5],
  'load_at', ARGV[6])
return 1
