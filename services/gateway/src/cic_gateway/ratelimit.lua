-- Rate limits: GCRA in its continuous-state leaky-bucket form (ITU-T I.371 shows the two
-- equivalent). Each bucket is a hash {level, at}: the units (requests or tokens) it holds as of
-- `at` (Redis server time, in microseconds). It leaks `limit` units per window, continuously, and
-- a request that would take it over `limit` is refused. A full burst of `limit` is allowed at
-- once; after that, one unit frees up every window/limit.
--
-- The level is kept rather than GCRA's theoretical arrival time because it stays a small number
-- (at most the limit plus what a settlement charged on top), which double-precision Lua numbers
-- hold exactly enough for the boundary to be exact (the `limit`-th request passes, the next one
-- does not), and because a changed limit then applies at once to what the bucket already holds.
--
-- Time is Redis's own clock (TIME), so that every gateway replica agrees. Scripts replicate by
-- their effects (the default since Redis 5), so reading TIME before writing is allowed.
--
-- Concurrency limits are leases: a sorted set per scope whose members are the requests in flight,
-- each scored with the time (us) its lease ends. A request's gateway renews its leases while it
-- runs and removes them when it ends; a gateway that dies leaves leases that simply run out, so
-- no slot is lost for longer than one lease.
--
-- KEYS: the n GCRA buckets, then the m concurrency sets.
-- ARGV[1] = mode, ARGV[2] = n, ARGV[3] = lease time (us); then for bucket i (3 values each):
--           limit, amount, window (us); then for concurrency set j (2 values each): limit, member.
--
-- "take":   takes the amount from every bucket and a slot in every set, or nothing at all.
--           Returns {allowed (1 or 0), index (1-based, over buckets then sets) of the limit that
--           must wait longest (0 when allowed), that wait (us), then per bucket and set:
--           remaining, us until empty (0 for a set)}. A full set's wait is the time until its
--           first lease ends, at most one second (a request usually ends before its lease).
-- "settle": adds the amount to every bucket (negative: gives back; a bucket may go over its
--           limit, the next request then waits) and removes the member from every set.
-- "renew":  moves the member's lease in every set to now + lease time (if it still holds one).

if redis.replicate_commands then
  redis.replicate_commands()
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local mode = ARGV[1]
local n = tonumber(ARGV[2])
local lease_us = tonumber(ARGV[3])
local m = #KEYS - n
-- Float noise far below a unit must not refuse a request that fits exactly.
local EPSILON = 1e-6
local MAX_SET_WAIT_US = 1000000

local function level_of(key, limit, window)
  local state = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(state[1])
  if level == nil then
    return 0
  end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.max(0, level - elapsed * limit / window)
end

local function store(key, level, limit, window)
  if level <= EPSILON then
    redis.call('DEL', key)
    return
  end
  local empty_after_us = level * window / limit
  redis.call('HSET', key, 'level', string.format('%.17g', level), 'at', string.format('%.0f', now))
  redis.call('PEXPIRE', key, math.ceil(empty_after_us / 1000) + 1000)
end

local function hold(key, member)
  redis.call('ZADD', key, string.format('%.0f', now + lease_us), member)
  redis.call('PEXPIRE', key, math.ceil(lease_us / 1000) + 1000)
end

local levels, limits, amounts, windows = {}, {}, {}, {}
for i = 1, n do
  limits[i] = tonumber(ARGV[3 * i + 1])
  amounts[i] = tonumber(ARGV[3 * i + 2])
  windows[i] = tonumber(ARGV[3 * i + 3])
end
local set_limits, members = {}, {}
for j = 1, m do
  set_limits[j] = tonumber(ARGV[3 * n + 2 * j + 2])
  members[j] = ARGV[3 * n + 2 * j + 3]
end

if mode == 'renew' then
  for j = 1, m do
    local key = KEYS[n + j]
    if redis.call('ZSCORE', key, members[j]) then
      hold(key, members[j])
    end
  end
  return 1
end

for i = 1, n do
  levels[i] = level_of(KEYS[i], limits[i], windows[i])
end

if mode == 'settle' then
  for i = 1, n do
    store(KEYS[i], math.max(0, levels[i] + amounts[i]), limits[i], windows[i])
  end
  for j = 1, m do
    redis.call('ZREM', KEYS[n + j], members[j])
  end
  return 1
end

local worst, wait = 0, 0
local function consider(index, wait_i)
  if wait_i > wait or worst == 0 then
    worst, wait = index, wait_i
  end
end

for i = 1, n do
  local excess = levels[i] + amounts[i] - limits[i]
  if excess > EPSILON then
    consider(i, math.ceil(excess * windows[i] / limits[i]))
  end
end

local held = {}
for j = 1, m do
  local key = KEYS[n + j]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now))
  held[j] = redis.call('ZCARD', key)
  if held[j] + 1 > set_limits[j] then
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local until_free = first[2] and (tonumber(first[2]) - now) or MAX_SET_WAIT_US
    consider(n + j, math.max(1, math.min(MAX_SET_WAIT_US, until_free)))
  end
end

local reply = {worst == 0 and 1 or 0, worst, wait}
for i = 1, n do
  local level = levels[i]
  if worst == 0 then
    level = level + amounts[i]
    store(KEYS[i], level, limits[i], windows[i])
  end
  reply[#reply + 1] = math.max(0, math.floor(limits[i] - level + EPSILON))
  reply[#reply + 1] = math.ceil(level * windows[i] / limits[i])
end
for j = 1, m do
  if worst == 0 then
    hold(KEYS[n + j], members[j])
    held[j] = held[j] + 1
  end
  reply[#reply + 1] = math.max(0, set_limits[j] - held[j])
  reply[#reply + 1] = 0
end
return reply
