-- Shared by every registry script (prepended to each). Keys under the prefix P:
--   P..'nodes'            SET of every node id
--   P..'model:'..model    SET of the node ids of a model
--   P..'node:'..id        HASH of one node (see register.lua)
--   P..'leases:'..id      SET of the lease ids held on a node (in-flight = SCARD)
--   P..'lease_expiry'     ZSET lease id -> expiry time (epoch seconds)
--   P..'lease_node'       HASH lease id -> node id
--   P..'turn:'..model     counter that rotates ties and round-robin
--   P..'ready:'..model    ZSET of the model's nodes a pick may choose without a trial (ready,
--                         breaker closed), scored by leases in flight + weighted load (index)
--   P..'ready_region:'..#region..':'..region..':'..model   the same for one region's nodes
--   P..'open:'..model     SET of the model's ready nodes whose breaker is not closed
--   P..'sampled:'..model  ZSET of the model's nodes whose load sample counts -> its time
--   P..'weights'          HASH waiting, kv: the load weights the scores were built with
-- The index keys are kept by `sync` below on every change of a node's state, breaker, leases
-- or load, so that a pick reads a few entries instead of every node of the model.
local function node_key(p, id) return p .. 'node:' .. id end
local function leases_key(p, id) return p .. 'leases:' .. id end

-- The node as a flat reply: id, in-flight, then its hash as field/value pairs.
local function node_reply(p, id)
  return {id, redis.call('SCARD', leases_key(p, id)), redis.call('HGETALL', node_key(p, id))}
end

-- What a release needs of the node: id, in-flight, model, state, breaker, opened_at.
local function node_status(p, id)
  local f = redis.call('HMGET', node_key(p, id), 'model', 'state', 'breaker', 'opened_at')
  return {id, redis.call('SCARD', leases_key(p, id)), f[1], f[2], f[3] or 'closed', f[4] or '0'}
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

local function ready_key(p, model) return p .. 'ready:' .. model end
local function region_key(p, model, region)
  return p .. 'ready_region:' .. #region .. ':' .. region .. ':' .. model
end
local function open_key(p, model) return p .. 'open:' .. model end
local function sampled_key(p, model) return p .. 'sampled:' .. model end

local function unindex(p, id, model, region)
  redis.call('ZREM', ready_key(p, model), id)
  redis.call('SREM', open_key(p, model), id)
  if region and region ~= '' then redis.call('ZREM', region_key(p, model, region), id) end
end

-- A node's score: leases in flight, plus its weighted load unless that sample went stale.
local function score_of(p, id, waiting, kv, stale)
  local score = redis.call('SCARD', leases_key(p, id))
  if stale ~= '1' then
    local w = redis.call('HMGET', p .. 'weights', 'waiting', 'kv')
    score = score + (tonumber(w[1]) or 0) * (tonumber(waiting) or 0)
      + (tonumber(w[2]) or 0) * (tonumber(kv) or 0)
  end
  return score
end

-- Puts the node where picks look for it, after any change to it.
local function sync(p, id)
  local f = redis.call('HMGET', node_key(p, id), 'model', 'state', 'breaker', 'region',
    'load_waiting', 'load_kv', 'load_stale')
  local model, region = f[1], f[4]
  if not model then return end
  if f[2] ~= 'ready' then
    unindex(p, id, model, region)
  elseif f[3] ~= 'closed' then
    unindex(p, id, model, region)
    redis.call('SADD', open_key(p, model), id)
  else
    local score = score_of(p, id, f[5], f[6], f[7])
    redis.call('ZADD', ready_key(p, model), score, id)
    redis.call('SREM', open_key(p, model), id)
    if region and region ~= '' then redis.call('ZADD', region_key(p, model, region), score, id) end
  end
end

-- The load weights picks ask for; a change re-scores every node (rare: a settings change).
local function use_weights(p, waiting, kv)
  local w = redis.call('HMGET', p .. 'weights', 'waiting', 'kv')
  if tonumber(w[1]) == waiting and tonumber(w[2]) == kv then return end
  redis.call('HSET', p .. 'weights', 'waiting', waiting, 'kv', kv)
  for _, id in ipairs(redis.call('SMEMBERS', p .. 'nodes')) do sync(p, id) end
end
