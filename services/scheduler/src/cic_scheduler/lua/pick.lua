-- One pick, atomically: filter the model's nodes, let the policy choose, take a lease.
-- KEYS: model set, turn counter, lease_expiry, lease_node
-- ARGV: prefix, now, lease id, lease expiry, breaker open_s, policy mode
--       (least_loaded|round_robin|prefix_affinity), waiting weight, kv-cache weight,
--       max load-sample age, prefix-affinity max extra load, prefix key, excluded ids...
-- Returns {'not_served'}, {'no_node'} or {'ok', node, trial (0|1)}.
local p, now, lease = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local open_s, mode = tonumber(ARGV[5]), ARGV[6]
local w_waiting, w_kv, max_age = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local max_extra, prefix_key = tonumber(ARGV[10]), ARGV[11]
local excluded = {}
for i = 12, #ARGV do excluded[ARGV[i]] = true end

local served, candidates = false, {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local f = redis.call('HMGET', node_key(p, id), 'state', 'breaker', 'opened_at',
    'load_waiting', 'load_kv', 'load_at')
  local state = f[1]
  if state and state ~= 'terminated' and state ~= 'failed' then served = true end
  if state == 'ready' and not excluded[id] then
    local breaker, trial = f[2], false
    if breaker == 'open' and open_elapsed(f[3], now, open_s) then trial = true end
    if breaker == 'closed' or trial then
      local score = redis.call('SCARD', leases_key(p, id))
      local load_at = tonumber(f[6])
      if load_at and now - load_at <= max_age then
        score = score + w_waiting * tonumber(f[4]) + w_kv * tonumber(f[5])
      end
      candidates[#candidates + 1] = {id = id, score = score, trial = trial}
    end
  end
end
if not served then return {'not_served'} end
if #candidates == 0 then return {'no_node'} end
table.sort(candidates, function(a, b) return a.id < b.id end)

local function in_turn(list)
  if #list == 1 then return list[1] end
  local turn = redis.call('INCR', KEYS[2])
  return list[(turn - 1) % #list + 1]
end

local function least_loaded()
  local fewest = math.huge
  for _, c in ipairs(candidates) do fewest = math.min(fewest, c.score) end
  local tied = {}
  for _, c in ipairs(candidates) do
    if c.score == fewest then tied[#tied + 1] = c end
  end
  return in_turn(tied), fewest
end

-- Rendezvous hashing: the candidate whose hash with the key is highest owns the key, so
-- removing a node moves only the keys it owned.
local function prefix_owner()
  local best, best_hash = nil, ''
  for _, c in ipairs(candidates) do
    local h = redis.sha1hex(prefix_key .. '\0' .. c.id)
    if h > best_hash then best, best_hash = c, h end
  end
  return best
end

local chosen
if mode == 'round_robin' then
  chosen = in_turn(candidates)
elseif mode == 'prefix_affinity' and prefix_key ~= '' then
  local owner = prefix_owner()
  local lightest, fewest = least_loaded()
  if owner.score <= fewest + max_extra then chosen = owner else chosen = lightest end
else
  chosen = least_loaded()
end

redis.call('SADD', leases_key(p, chosen.id), lease)
redis.call('ZADD', KEYS[3], ARGV[4], lease)
redis.call('HSET', KEYS[4], lease, chosen.id)
if chosen.trial then
  redis.call('HSET', node_key(p, chosen.id), 'breaker', 'half_open', 'trial', lease)
end
return {'ok', node_reply(p, chosen.id), chosen.trial and 1 or 0}
