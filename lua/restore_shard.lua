--[[
  restore_shard.lua: rebuilds one shard from the ledger of record, after Redis lost data.
  Run by a repair (src/recovery/) on a shard it fenced and whose stream it drained into the
  ledger, with everything the ledger holds for the shard.

  Guarantee: the shard ends exactly as given, or nothing is written. It is written only if
  the caller still owns the shard's fence, and only if the shard's version is the one the
  caller saw when it fenced the shard (every script that changes a shard bumps its version),
  so a restore can never overwrite a write it did not see. The fence stays: the repair lifts
  it once every shard of the SKU is rebuilt.

  What is rebuilt: counters, rules, shard count, allowances, idempotency records and
  barriers, hold records and their deadlines, applied restock ops (:o:), applied incoming
  moves (:i:), outgoing moves (:x:) and the pending ones (the moves hash), so that restocks
  and moves stay idempotent across a repair and a move cut in half is completed once.
  The shard's counters start again from its contents: :loaded is what it holds plus what
  its pending moves carry, :moved_out what they carry.

  The stream: its next id is put after every id the ledger settled for the shard, so that a
  new event can never be taken for one already settled (a Redis that lost data, or whose
  clock is behind, would otherwise hand out settled ids again).

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  KEYS[4] pending outgoing moves of the shard
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] owner: the repair's fence token
  ARGV[4] the shard's version when it was fenced, -1 if it had none
  ARGV[5] per-user limit, ARGV[6] hold ms, ARGV[7] start ms, ARGV[8] end ms, ARGV[9] shards
  ARGV[10] available, ARGV[11] held, ARGV[12] sold, ARGV[13] made
  ARGV[14] the last stream id the ledger settled for the shard, "<ms>-<seq>" ("0-0": none)
  ARGV[15] number of pending outgoing moves p, then p times: move id, to shard, units
  ARGV[16 + 3p ..] field, value pairs: <user> record (allowance, keys and barriers),
                   ~<token> hold record, :o:<op>, :i:<move>, :x:<move> records

  Returns {now ms, shard avail after, code}: OK; FENCED (the caller does not own the fence:
  nothing written); SKU_LIVE (the shard changed since it was fenced: nothing written).
  Events: restored {qty: what the shard holds plus what its pending moves carry}, then
  moved_out {move, to, qty} for each pending move, as a load followed by those moves.
]]
local movesKey = KEYS[4]
local owner, expected = ARGV[3], tonumber(ARGV[4])
if rcall('HGET', shardKey, ':fence') ~= owner then return { now, 0, FENCED } end
local version = rcall('HGET', shardKey, ':ver')
if (version and tonumber(version) or -1) ~= expected then return { now, 0, SKU_LIVE } end

local avail, held, sold = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local pendingCount = tonumber(ARGV[15])
local pending, pendingUnits, moveLines = {}, 0, {}
for i = 0, pendingCount - 1 do
  local b = 16 + 3 * i
  local move, to, qty = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2])
  pendingUnits = pendingUnits + qty
  pending[#pending + 1] = move
  pending[#pending + 1] = to .. '|' .. qty
  moveLines[#moveLines + 1] = 'moved_out|' .. move .. '|' .. to .. '|' .. qty
end

rcall('DEL', shardKey, deadlinesKey, movesKey)
rcall('HSET', shardKey, ':fence', owner, ':ver', math.max(expected, 0) + 1, ':shards', ARGV[9],
  ':lim', ARGV[5], ':hold', ARGV[6], ':start', ARGV[7], ':end', ARGV[8],
  ':avail', avail, ':held', held, ':sold', sold, ':loaded', avail + held + sold + pendingUnits,
  ':restocked', 0, ':moved_in', 0, ':moved_out', pendingUnits, ':made', ARGV[13])
if #pending > 0 then rcall('HSET', movesKey, unpack(pending)) end
-- Written in chunks: Lua's unpack takes a few thousand values at most.
local chunk, deadlines = {}, {}
for i = 16 + 3 * pendingCount, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  chunk[#chunk + 1] = field
  chunk[#chunk + 1] = value
  -- A cart's line ("|#<cart id>") has no deadline entry: its cart expires it.
  if string.byte(field, 1) == 126 and string.sub(value, 1, 2) == 'h|'
      and not string.find(value, '|#', 1, true) then
    local deadline = string.match(value, '^h|[^|]*|%d+|(%d+)')
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

local function position(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local floorMs, floorSeq = position(ARGV[14])
local id = '*'
if rcall('EXISTS', eventsKey) == 1 then
  local info = rcall('XINFO', 'STREAM', eventsKey)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local lastMs, lastSeq = position(info[i + 1])
      if floorMs > lastMs or (floorMs == lastMs and floorSeq > lastSeq) then
        rcall('XSETID', eventsKey, ARGV[14])
      end
    end
  end
elseif now <= floorMs then
  id = floorMs .. '-' .. (floorSeq + 1)
end
local lines = { 'restored|' .. (avail + held + sold + pendingUnits) }
for _, line in ipairs(moveLines) do lines[#lines + 1] = line end
rcall('XADD', eventsKey, id, 'sku', sku, 'shard', shard, 'ts', now, 'ev', table.concat(lines, '\n'))
return { now, avail, OK }
