-- One pick, atomically: let the policy choose among the nodes that may take the request, and
-- take a lease on the chosen one.
-- KEYS: model set, turn counter, lease_expiry, lease_node
-- ARGV: prefix, now, lease id, lease expiry, breaker open_s, policy mode
--       (least_loaded|round_robin|prefix_affinity), waiting weight, kv-cache weight,
--       max load-sample age, prefix-affinity max extra load, prefix key, model, region ('' for
--       none), excluded ids...
-- Candidates come from the model's index (common.lua): its ready ZSET, lowest score first, and
-- its open SET, whose nodes are candidates for their half-open trial once the breaker has been
-- open for open_s. With a region, that region's nodes are tried first and the others only when
-- none there may take the request.
-- Returns {'not_served'}, {'no_node'} or {'ok', node, trial (0|1)}.
local p, now, lease = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local open_s, mode = tonumber(ARGV[5]), ARGV[6]
local max_age, max_extra, prefix_key = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
local model, region = ARGV[12], ARGV[13]
local excluded, n_excluded = {}, 0
for i = 14, #ARGV do
  excluded[ARGV[i]] = true
  n_excluded = n_excluded + 1
end
use_weights(p, tonumber(ARGV[7]), tonumber(ARGV[8]))

local function by_id(a, b) return a.id < b.id end

-- Samples older than max_age stop counting: their nodes are re-scored on their leases alone.
local sampled = sampled_key(p, model)
local cutoff = '(' .. string.format('%.17g', now - max_age)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', sampled, '-inf', cutoff)) do
  redis.call('HSET', node_key(p, id), 'load_stale', 1)
  redis.call('ZREM', sampled, id)
  sync(p, id)
end

-- Nodes whose breaker has been open long enough for their half-open trial.
local function trials(in_region)
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', open_key(p, model))) do
    if not excluded[id] then
      local f = redis.call('HMGET', node_key(p, id), 'breaker', 'opened_at', 'region',
        'load_waiting', 'load_kv', 'load_at')
      if f[1] == 'open' and open_elapsed(f[2], now, open_s) and (not in_region or f[3] == region)
      then
        local at = tonumber(f[6])
        local stale = (at and now - at <= max_age) and '0' or '1'
        out[#out + 1] = {id = id, score = score_of(p, id, f[4], f[5], stale), trial = true}
      end
    end
  end
  return out
end

-- The lowest score among the index's entries that are not excluded.
local function lowest(zkey)
  local front = redis.call('ZRANGE', zkey, 0, n_excluded, 'WITHSCORES')
  for i = 1, #front, 2 do
    if not excluded[front[i]] then return tonumber(front[i + 1]) end
  end
  return nil
end

local function in_turn(list)
  if #list == 1 then return list[1] end
  local turn = redis.call('INCR', KEYS[2])
  return list[(turn - 1) % #list + 1]
end

local function least_loaded(zkey, trial_list)
  local fewest = lowest(zkey)
  for _, c in ipairs(trial_list) do
    if not fewest or c.score < fewest then fewest = c.score end
  end
  if not fewest then return nil, nil end
  local at = string.format('%.17g', fewest)
  local trial_tied = false
  for _, c in ipairs(trial_list) do
    if c.score == fewest then trial_tied = true end
  end
  if n_excluded == 0 and not trial_tied then
    -- The common case, without reading every tied node: the same choice as below (ties in id
    -- order, taken in turn), by counting them and reading the one whose turn it is.
    local count = redis.call('ZCOUNT', zkey, at, at)
    local index = 0
    if count > 1 then index = (redis.call('INCR', KEYS[2]) - 1) % count end
    local id = redis.call('ZRANGEBYSCORE', zkey, at, at, 'LIMIT', index, 1)[1]
    return {id = id, score = fewest, trial = false}, fewest
  end
  local tied = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zkey, at, at)) do
    if not excluded[id] then tied[#tied + 1] = {id = id, score = fewest, trial = false} end
  end
  local merged = false
  for _, c in ipairs(trial_list) do
    if c.score == fewest then
      tied[#tied + 1] = c
      merged = true
    end
  end
  -- ZRANGEBYSCORE gives equal scores in id order already.
  if merged then table.sort(tied, by_id) end
  return in_turn(tied), fewest
end

local function everyone(zkey, trial_list)
  local all = {}
  local entries = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    if not excluded[entries[i]] then
      all[#all + 1] = {id = entries[i], score = tonumber(entries[i + 1]), trial = false}
    end
  end
  for _, c in ipairs(trial_list) do all[#all + 1] = c end
  table.sort(all, by_id)
  return all
end

-- Rendezvous hashing: the candidate whose hash with the key is highest owns the key, so
-- removing a node moves only the keys it owned.
local function prefix_owner(candidates)
  local best, best_hash = nil, ''
  for _, c in ipairs(candidates) do
    local h = redis.sha1hex(prefix_key .. '\0' .. c.id)
    if h > best_hash then best, best_hash = c, h end
  end
  return best
end

local function choose(zkey, in_region)
  local trial_list = trials(in_region)
  if mode == 'round_robin' then
    local all = everyone(zkey, trial_list)
    if #all == 0 then return nil end
    return in_turn(all)
  end
  if mode == 'prefix_affinity' and prefix_key ~= '' then
    local all = everyone(zkey, trial_list)
    if #all == 0 then return nil end
    local owner = prefix_owner(all)
    local lightest, fewest = least_loaded(zkey, trial_list)
    if owner.score <= fewest + max_extra then return owner end
    return lightest
  end
  return (least_loaded(zkey, trial_list))
end

local chosen
if region ~= '' then chosen = choose(region_key(p, model, region), true) end
if not chosen then chosen = choose(ready_key(p, model), false) end
if not chosen then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local state = redis.call('HGET', node_key(p, id), 'state')
    if state and state ~= 'terminated' and state ~= 'failed' then return {'no_node'} end
  end
  return {'not_served'}
end

redis.call('SADD', leases_key(p, chosen.id), lease)
redis.call('ZADD', KEYS[3], ARGV[4], lease)
redis.call('HSET', KEYS[4], lease, chosen.id)
if chosen.trial then
  redis.call('HSET', node_key(p, chosen.id), 'breaker', 'half_open', 'trial', lease)
end
sync(p, chosen.id)
return {'ok', node_reply(p, chosen.id), chosen.trial and 1 or 0}
