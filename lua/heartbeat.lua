--[[
  heartbeat.lua: renews one engine's entry in the engine registry, drops the entries that
  expired, grants the engine's claims on the rates, and returns every live entry. Not
  prefixed by prelude.lua: the registry is not a shard's. Its keys share the hash tag
  {engines}, so the call is on one hash slot.

  An entry lives `ttl` ms from this call (Redis's clock). A claim is a part of a configured
  rate, in requests per second, held by one engine: "*" for the global rate, a SKU for its
  own. A claim is granted up to what the other live engines do not hold, so the claims on
  one rate never add up to more than its cap; an engine's claims go with its entry.

  KEYS[1] zset: engine id by expiry, ms
  KEYS[2] hash: engine id -> entry (opaque: host, pid, recent demand)
  KEYS[3] hash: engine id -> claims, "<name>=<rate>,..."
  ARGV[1] engine id
  ARGV[2] ttl, ms
  ARGV[3] entry
  ARGV[4] cap of the global claims (requests per second)
  ARGV[5] cap of one SKU's claims (requests per second)
  ARGV[6] claims wanted, "<name>=<rate>,..." ("" for none)

  Returns {now ms, claims granted, id, expiry, entry, id, expiry, entry, ...}, this engine
  included.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(dead) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)

local pattern = '([^,=]+)=(%d+)'
local held = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if id ~= ARGV[1] then
    for name, rate in string.gmatch(redis.call('HGET', KEYS[3], id) or '', pattern) do
      held[name] = (held[name] or 0) + tonumber(rate)
    end
  end
end

local granted = {}
for name, rate in string.gmatch(ARGV[6], pattern) do
  local cap = tonumber(name == '*' and ARGV[4] or ARGV[5])
  local grant = math.min(tonumber(rate), cap - (held[name] or 0))
  if grant > 0 then granted[#granted + 1] = name .. '=' .. string.format('%d', grant) end
end
local claims = table.concat(granted, ',')

redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if claims == '' then
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[3], ARGV[1], claims)
end

local out = {now, claims}
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = tonumber(live[i + 1])
  out[#out + 1] = redis.call('HGET', KEYS[2], live[i]) or ''
end
return out
