--[[
  take_lease.lua: takes a SKU's repair lease if nobody holds it on this Redis. A lease is
  "<run id>/<token>": one written by an earlier run of Redis (kept by its append-only file
  while the release that followed was lost) belongs to a repair of data that is gone, and
  is taken over. Not prefixed by prelude.lua: the lease is not a shard's.

  KEYS[1] the lease key
  ARGV[1] this Redis's run id (the caller read it with INFO)
  ARGV[2] owner: "<run id>/<token>", the repair's token
  ARGV[3] lease length, ms

  Returns 1 if taken, 0 if another repair of this run holds it.
]]
local held = redis.call('GET', KEYS[1])
local prefix = ARGV[1] .. '/'
if held and string.sub(held, 1, #prefix) == prefix then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
