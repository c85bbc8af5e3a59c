--[[
  move_in.lua: second half of a stock move: puts the units a donor shard took out (see
  move_out.lua) into this shard. Idempotent by move id, so completing a move twice (the
  mover and a recovering engine racing) adds the units once.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] move id
  ARGV[4] donor shard index
  ARGV[5] units (integer >= 1)

  Returns {now ms, shard avail after, code}:
    OK, REPLAYED (applied before), NO_SKU, FENCED (a repair owns the shard: the move stays
    pending, and the repair rebuilds it)
  Events: moved_in {move, from, qty}.
]]
local move, from, qty = ARGV[3], ARGV[4], tonumber(ARGV[5])
local moveField = ':i:' .. move
prefetch({ ':fence', ':lim', ':avail', ':moved_in', moveField })
if fenced() then return { now, 0, FENCED } end
if not hget(':lim') then return { now, 0, NO_SKU } end
if hget(moveField) then return { now, num(':avail'), REPLAYED } end
incr(':avail', qty)
incr(':moved_in', qty)
hset(moveField, qty)
emit('moved_in|' .. move .. '|' .. from .. '|' .. qty)
commit()
return { now, num(':avail'), OK }
