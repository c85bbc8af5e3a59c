--[[
  sweep.lua: the expiry sweeper. Expires holds whose deadline has passed, oldest first,
  returning their units and allowances; bounded work per call so that Redis never stalls.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] the most deadline entries to look at in this call

  Returns {now ms, shard avail after, holds expired, 1 if more entries are due else 0, code}:
  code OK, or FENCED (a repair owns the shard: nothing expired).
  Events: expired {rid, user, qty} per hold.
]]
local limit = tonumber(ARGV[3])
if fenced() then return { now, 0, 0, 0, FENCED } end
local expired, more = sweep(limit)
commit()
return { now, num(':avail'), expired, more and 1 or 0, OK }
