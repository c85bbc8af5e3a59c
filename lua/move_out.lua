--[[
  move_out.lua: first half of a stock move between two shards of a SKU: takes up to `want`
  available units out of this (donor) shard and records the move as pending. Idempotent by
  move id: a repeat returns what the first call took and takes nothing more.

  The units are then in transit: the SKU's conservation counts them as
  sum(moved_out) - sum(moved_in) over its shards. move_in.lua on the receiving shard is the
  second half; the pending record stays until the engine has applied it there, so a move cut
  short by a crash is completed later by whoever finds it (both halves are idempotent).

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  KEYS[4] pending outgoing moves of the shard: move id -> "<to shard>|<qty>"
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] move id
  ARGV[4] receiving shard index
  ARGV[5] units wanted (integer >= 1)

  Returns {now ms, shard avail after, code, units taken}:
    OK          units taken (>= 1)
    REPLAYED    the move was recorded before: units it took
    SHARD_EMPTY nothing available here
    NO_SKU      shard not loaded
    FENCED      a repair owns the shard
  Events: moved_out {move, to, qty}.
]]
local movesKey = KEYS[4]
local move, to, want = ARGV[3], ARGV[4], tonumber(ARGV[5])
local moveField = ':x:' .. move
prefetch({ ':fence', ':lim', ':avail', ':moved_out', moveField })
if fenced() then return { now, 0, FENCED, 0 } end
if not hget(':lim') then return { now, 0, NO_SKU, 0 } end
local taken = tonumber(hget(moveField))
if taken then return { now, num(':avail'), REPLAYED, taken } end
taken = math.min(want, num(':avail'))
if taken < 1 then return { now, num(':avail'), SHARD_EMPTY, 0 } end

incr(':avail', -taken)
incr(':moved_out', taken)
hset(moveField, taken)
rcall('HSET', movesKey, move, to .. '|' .. taken)
emit('moved_out|' .. move .. '|' .. to .. '|' .. taken)
commit()
return { now, num(':avail'), OK, taken }
