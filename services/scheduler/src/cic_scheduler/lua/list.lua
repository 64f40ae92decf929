-- ARGV: prefix, model ('' for every model). Every node as node_reply.
local p = ARGV[1]
local set = p .. 'nodes'
if ARGV[2] ~= '' then set = p .. 'model:' .. ARGV[2] end
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', set)) do
  if redis.call('EXISTS', node_key(p, id)) == 1 then out[#out + 1] = node_reply(p, id) end
end
return out
