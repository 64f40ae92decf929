-- ARGV: prefix, lease id, outcome (success|node_error|client_error|unspecified), now,
--       breaker failures.
-- Returns {0} for an unknown or expired lease, else {1, transition, status} where transition is
-- 'opened', 'closed' or '' and status the node's node_status (common.lua). The half-open
-- trial's success closes the breaker, its node error re-opens it, and any other outcome lets
-- the next pick be the trial. Otherwise a node error counts towards opening a closed breaker
-- and a success resets that count.
local p, lease, outcome, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local failures = tonumber(ARGV[5])
local id = drop_lease(p, lease)
if not id then return {0} end
local key = node_key(p, id)
local f = redis.call('HMGET', key, 'breaker', 'trial', 'node_errors')
if not f[1] then return {0} end
local transition = ''
if f[1] == 'half_open' and f[2] == lease then
  if outcome == 'success' then
    close_breaker(key)
    transition = 'closed'
  elseif outcome == 'node_error' then
    open_breaker(key, now)
    transition = 'opened'
  else
    redis.call('HSET', key, 'breaker', 'open', 'trial', '')
  end
elseif outcome == 'success' then
  if f[3] and f[3] ~= '0' then redis.call('HSET', key, 'node_errors', 0) end
elseif outcome == 'node_error' and f[1] == 'closed' then
  local errors = redis.call('HINCRBY', key, 'node_errors', 1)
  if errors >= failures then
    open_breaker(key, now)
    transition = 'opened'
  end
end
sync(p, id)
return {1, transition, node_status(p, id)}
