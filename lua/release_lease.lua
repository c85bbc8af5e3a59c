--[[
  release_lease.lua: gives up a SKU's repair lease if the caller still holds it (the lease
  may have run out and gone to another repairer meanwhile). Not prefixed by prelude.lua: the
  lease is not a shard's.

  KEYS[1] the lease key
  ARGV[1] owner: the repair's token

  Returns 1 if released, 0 if the lease was not the caller's.
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
