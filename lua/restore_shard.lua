--[[
  restore_shard.lua: rebuilds one shard from the ledger of record, after Redis lost data
  (restarted without its append-only file, or lost its last second of writes). Run by the
  audit's repair, one shard at a time, with the state the ledger holds for the shard.

  Guarantee: the shard ends exactly as given (counters, rules, allowances, idempotency keys
  and barriers, hold records, deadline index), or, if the shard changed since the audit
  looked at it (its :made counter differs from the expected one), nothing is written and
  SKU_LIVE is returned so that the audit looks again. Pending moves are dropped:
  the audit completed them in the ledger's account before. The `restored` event rebases the
  ledger's view of the shard on what it holds now.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  KEYS[4] pending outgoing moves of the shard
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] expected :made counter of the shard as the audit saw it, -1 if the shard was absent
  ARGV[4] per-user limit, ARGV[5] hold ms, ARGV[6] start ms, ARGV[7] end ms, ARGV[8] shards
  ARGV[9] available, ARGV[10] held, ARGV[11] sold, ARGV[12] made
  ARGV[13..] field, value pairs: <user> allowance, <user>:<key> record, <rid> hold record

  Returns {now ms, shard avail after, code}: OK, or SKU_LIVE (changed meanwhile; nothing written).
  Events: restored {qty}.
]]
local movesKey = KEYS[4]
local expected = tonumber(ARGV[3])
local made = rcall('HGET', shardKey, ':made')
local seen = made and tonumber(made) or -1
if seen ~= expected then return { now, num(':avail'), SKU_LIVE } end

local avail, held, sold = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
rcall('DEL', shardKey, deadlinesKey, movesKey)
rcall('HSET', shardKey,
  ':lim', ARGV[4], ':hold', ARGV[5], ':start', ARGV[6], ':end', ARGV[7],
  ':avail', avail, ':held', held, ':sold', sold, ':loaded', avail + held + sold,
  ':restocked', 0, ':moved_in', 0, ':moved_out', 0, ':made', ARGV[12])
-- Written in chunks: Lua's unpack takes a few thousand values at most.
local chunk, deadlines = {}, {}
for i = 13, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  chunk[#chunk + 1] = field
  chunk[#chunk + 1] = value
  if string.find(field, '~', 1, true) and string.sub(value, 1, 2) == 'h|' then
    local deadline = string.match(value, '^h|[^|]*|%d+|(%d+)|')
    deadlines[#deadlines + 1] = deadline
    deadlines[#deadlines + 1] = field
  end
  if #chunk >= 1000 then
    rcall('HSET', shardKey, unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then rcall('HSET', shardKey, unpack(chunk)) end
for i = 1, #deadlines, 1000 do
  rcall('ZADD', deadlinesKey, unpack(deadlines, i, math.min(i + 999, #deadlines)))
end
emit('restored|' .. (avail + held + sold))
commit()
return { now, avail, OK }
