--[[
  load_shard.lua: loads one shard of a SKU with its units and the SKU's rules, or replaces
  a shard that has never recorded a reservation or a barrier. A live shard is refused: its
  holds, sales and barriers must never be wiped (use restock.lua to add units).

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  KEYS[4] pending outgoing moves of the shard
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] units for this shard (integer >= 0)
  ARGV[4] per-user limit (>= 1)
  ARGV[5] hold ms (>= 1)
  ARGV[6] sale starts, ms since epoch (0 = open)
  ARGV[7] sale ends, ms since epoch (0 = open)
  ARGV[8] number of shards of the SKU

  Returns {now ms, shard avail after, code}:
    OK          loaded; REPLACED when an earlier load was replaced
    SKU_LIVE    the shard has holds, sales, barriers or moves in flight, or is retired
                (retire_shard.lua; a retired SKU is never loaded again): nothing changed
    FENCED      a repair owns the shard: nothing changed
  Events: loaded {qty, limit, hold, start, end, shards}.
]]
local movesKey = KEYS[4]
local units = tonumber(ARGV[3])
prefetch({ ':fence', ':lim', ':avail', ':made', ':held', ':sold', ':ver', ':retired' })
if fenced() then return { now, 0, FENCED } end
if hget(':retired') then return { now, 0, SKU_LIVE } end
local version = num(':ver')
local existed = hget(':lim') ~= false
if num(':made') > 0 or num(':held') > 0 or num(':sold') > 0 or rcall('HLEN', movesKey) > 0 then
  return { now, num(':avail'), SKU_LIVE }
end

rcall('DEL', shardKey, deadlinesKey, movesKey)
cache = {}
hset(':avail', units)
hset(':held', 0)
hset(':sold', 0)
hset(':loaded', units)
hset(':restocked', 0)
hset(':moved_in', 0)
hset(':moved_out', 0)
hset(':made', 0)
hset(':lim', ARGV[4])
hset(':hold', ARGV[5])
hset(':start', ARGV[6])
hset(':end', ARGV[7])
hset(':shards', ARGV[8])
-- The version goes on across a replace, so that a snapshot taken before it cannot apply.
hset(':ver', version)
emit(table.concat({ 'loaded', units, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8] }, '|'))
commit()
return { now, units, existed and REPLACED or OK }
