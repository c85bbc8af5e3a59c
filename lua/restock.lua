--[[
  restock.lua: adds units to a loaded shard; idempotent by operation id, so a restock
  retried after a timeout, or resumed after a crash half-way through its shards, adds each
  shard's share once.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] units to add (integer >= 1)
  ARGV[4] operation id
  ARGV[5] the SKU's shard count the caller split the units by

  Returns {now ms, shard avail after, code}:
    OK, REPLAYED (this op was applied before), BAD_QTY, NO_SKU,
    FENCED (a repair owns the shard), STALE_ROUTE (split by another shard count)
  Events: restocked {qty, op}.
]]
local qty, op = tonumber(ARGV[3]), ARGV[4]
local opField = ':o:' .. op
prefetch({ ':fence', ':shards', ':lim', ':avail', ':restocked', opField })
if fenced() then return { now, 0, FENCED } end
if not hget(':lim') then return { now, 0, NO_SKU } end
if staleRoute(ARGV[5]) then return { now, 0, STALE_ROUTE } end
if hget(opField) then return { now, num(':avail'), REPLAYED } end
if not qty or qty < 1 or qty ~= math.floor(qty) then return { now, num(':avail'), BAD_QTY } end
incr(':avail', qty)
incr(':restocked', qty)
hset(opField, qty)
emit('restocked|' .. qty .. '|' .. op)
commit()
return { now, num(':avail'), OK }
