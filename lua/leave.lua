--[[
  leave.lua: removes one engine's entry and claims from the engine registry at once (a
  graceful shutdown), so that the others take its share at their next heartbeat instead
  of when the entry expires. Not prefixed by prelude.lua; keys as in heartbeat.lua, one
  hash slot.

  KEYS[1] zset: engine id by expiry, ms
  KEYS[2] hash: engine id -> entry
  KEYS[3] hash: engine id -> claims
  ARGV[1] engine id

  Returns 1 if the entry was there, 0 if not (it had expired).
]]
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
