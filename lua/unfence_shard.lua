--[[
  unfence_shard.lua: lifts a repair's fence (see fence_shard.lua), if the repair still owns
  it: a fence another repairer took over stays.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] owner: the repair's token

  Returns {now ms, code}: OK (lifted), or NOT_FOUND (not fenced by this owner: nothing changed).
  Events: none.
]]
local owner = ARGV[3]
if rcall('HGET', shardKey, ':fence') ~= owner then return { now, NOT_FOUND } end
rcall('HDEL', shardKey, ':fence')
return { now, OK }
