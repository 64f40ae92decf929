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
-- ARGV[1] = "take":   ARGV[2] = window (us); then for bucket i: ARGV[2i+1] = limit,
--                     ARGV[2i+2] = cost. Takes the cost from every bucket, or from none.
--                     Returns {allowed (1 or 0), index of the bucket that must wait longest (0
--                     when allowed), that wait (us), then per bucket: remaining, us until empty}.
-- ARGV[1] = "settle": same layout, with ARGV[2i+2] = tokens to add (negative: to give back).
--                     A bucket may go over its limit: the next request then waits.

if redis.replicate_commands then
  redis.replicate_commands()
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local window = tonumber(ARGV[2])
-- Float noise far below a unit must not refuse a request that fits exactly.
local EPSILON = 1e-6

local function level_of(key, limit)
  local state = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(state[1])
  if level == nil then
    return 0
  end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.max(0, level - elapsed * limit / window)
end

local function store(key, level, limit)
  if level <= EPSILON then
    redis.call('DEL', key)
    return
  end
  local empty_after_us = level * window / limit
  redis.call('HSET', key, 'level', string.format('%.17g', level), 'at', string.format('%.0f', now))
  redis.call('PEXPIRE', key, math.ceil(empty_after_us / 1000) + 1000)
end

local levels, limits, amounts = {}, {}, {}
for i = 1, #KEYS do
  limits[i] = tonumber(ARGV[2 * i + 1])
  amounts[i] = tonumber(ARGV[2 * i + 2])
  levels[i] = level_of(KEYS[i], limits[i])
end

if ARGV[1] == 'settle' then
  for i = 1, #KEYS do
    store(KEYS[i], math.max(0, levels[i] + amounts[i]), limits[i])
  end
  return 1
end

local worst, wait = 0, 0
for i = 1, #KEYS do
  local excess = levels[i] + amounts[i] - limits[i]
  if excess > EPSILON then
    local wait_i = math.ceil(excess * window / limits[i])
    if wait_i > wait or worst == 0 then
      worst, wait = i, wait_i
    end
  end
end

local reply = {worst == 0 and 1 or 0, worst, wait}
for i = 1, #KEYS do
  local level = levels[i]
  if worst == 0 then
    level = level + amounts[i]
    store(KEYS[i], level, limits[i])
  end
  reply[#reply + 1] = math.max(0, math.floor(limits[i] - level + EPSILON))
  reply[#reply + 1] = math.ceil(level * window / limits[i])
end
return reply
