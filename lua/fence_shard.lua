--[[
  fence_shard.lua: a repair takes the shard. From this call on, every script that would
  change the shard refuses with FENCED, until the repair lifts the fence (unfence_shard.lua)
  after it rebuilt the shard or found nothing to rebuild. A shard Redis lost is fenced too:
  its hash then holds the fence alone, so that nothing is written there before the rebuild.

  Who may fence is decided by the repair lease (one repairer per SKU, see src/recovery/).
  A later repairer's fence replaces an earlier one's, so a repairer whose lease ran out can
  no longer restore: restore_shard.lua and unfence_shard.lua check the owner.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] owner: the repair's token

  Returns {now ms, the shard's version, -1 if it has none (absent, or lost)}.
  Events: none (nothing the ledger counts changes).
]]
local owner = ARGV[3]
local version = rcall('HGET', shardKey, ':ver')
rcall('HSET', shardKey, ':fence', owner)
return { now, version and tonumber(version) or -1 }
