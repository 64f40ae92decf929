-- ARGV: prefix, now, at most this many leases. Gives back leases whose expiry has passed; a
-- half-open trial that never came back re-opens its node's breaker.
-- Returns a flat list: lease id, node id, lease id, node id...
local p, now = ARGV[1], ARGV[2]
local due = redis.call('ZRANGEBYSCORE', p .. 'lease_expiry', '-inf', now, 'LIMIT', 0, ARGV[3])
local out = {}
for _, lease in ipairs(due) do
  local id = drop_lease(p, lease)
  if id then
    local key = node_key(p, id)
    if redis.call('HGET', key, 'trial') == lease then open_breaker(key, now) end
    sync(p, id)
    out[#out + 1] = lease
    out[#out + 1] = id
  end
end
return out
