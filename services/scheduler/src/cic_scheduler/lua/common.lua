-- Shared by every registry script (prepended to each). Keys under the prefix P:
--   P..'nodes'            SET of every node id
--   P..'model:'..model    SET of the node ids of a model
--   P..'node:'..id        HASH of one node (see register.lua)
--   P..'leases:'..id      SET of the lease ids held on a node (in-flight = SCARD)
--   P..'lease_expiry'     ZSET lease id -> expiry time (epoch seconds)
--   P..'lease_node'       HASH lease id -> node id
--   P..'turn:'..model     counter that rotates ties and round-robin
local function node_key(p, id) return p .. 'node:' .. id end
local function leases_key(p, id) return p .. 'leases:' .. id end

-- The node as a flat reply: id, in-flight, then its hash as field/value pairs.
local function node_reply(p, id)
  return {id, redis.call('SCARD', leases_key(p, id)), redis.call('HGETALL', node_key(p, id))}
end

-- Whether a stored breaker admits a trial now: open for at least open_s seconds.
local function open_elapsed(opened_at, now, open_s)
  return now >= (tonumber(opened_at) or 0) + open_s
end

local function open_breaker(key, now)
  redis.call('HSET', key, 'breaker', 'open', 'opened_at', now, 'trial', '',
    'node_errors', 0, 'probe_failures', 0)
end

local function close_breaker(key)
  redis.call('HSET', key, 'breaker', 'closed', 'trial', '', 'node_errors', 0, 'probe_failures', 0)
end

-- Drops one lease wherever it is recorded; returns the node id it was on, or false.
local function drop_lease(p, lease)
  local id = redis.call('HGET', p .. 'lease_node', lease)
  redis.call('HDEL', p .. 'lease_node', lease)
  redis.call('ZREM', p .. 'lease_expiry', lease)
  if not id then return false end
  if redis.call('SREM', leases_key(p, id), lease) == 0 then return false end
  return id
end
