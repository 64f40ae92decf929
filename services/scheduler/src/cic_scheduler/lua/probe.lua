-- ARGV: prefix, id, endpoint, ok (1|0), now, breaker open_s, breaker failures.
-- Returns {} when the node is gone or its endpoint changed, else {transition, node}.
-- A failed probe counts towards opening a closed breaker and re-opens a half-open one; a
-- successful probe resets that count and closes a half-open breaker (open for open_s already).
local p, id, ok, now = ARGV[1], ARGV[2], ARGV[4] == '1', tonumber(ARGV[5])
local open_s, failures = tonumber(ARGV[6]), tonumber(ARGV[7])
local key = node_key(p, id)
local f = redis.call('HMGET', key, 'endpoint', 'breaker', 'opened_at')
if f[1] ~= ARGV[3] then return {} end
local half_open = f[2] == 'half_open' or (f[2] == 'open' and open_elapsed(f[3], now, open_s))
local transition = ''
if ok then
  redis.call('HSET', key, 'probe_failures', 0)
  if half_open then
    close_breaker(key)
    transition = 'closed'
  end
elseif half_open then
  open_breaker(key, now)
  transition = 'opened'
elseif f[2] == 'closed' then
  if redis.call('HINCRBY', key, 'probe_failures', 1) >= failures then
    open_breaker(key, now)
    transition = 'opened'
  end
end
sync(p, id)
return {transition, node_reply(p, id)}
