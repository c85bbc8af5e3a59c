--[[
  purge_shard.lua: the second half of a SKU's retirement on one shard: deletes every key of
  a retired shard (see retire_shard.lua) once the ledger has settled its stream, so that
  nothing of it is lost to the ledger of record. Settled means the ledger's consumer group
  has been delivered the stream's last entry and acknowledged every entry (none pending):
  checked here, in the same atomic step as the delete, so no event can slip in between.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  KEYS[4] pending outgoing moves of the shard
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] the ledger's consumer group

  Returns {now ms, code}:
    OK          purged now: the shard's four keys are gone
    REPLAYED    nothing of the shard is left: nothing changed
    SKU_LIVE    the shard is not retired, or its stream is not settled yet: nothing changed
    FENCED      a repair owns the shard: nothing changed
  Events: none (the stream itself goes).
]]
local movesKey = KEYS[4]
local group = ARGV[3]
if rcall('EXISTS', shardKey, eventsKey, deadlinesKey, movesKey) == 0 then return { now, REPLAYED } end
if fenced() then return { now, FENCED } end
if not hget(':retired') then return { now, SKU_LIVE } end

local function field(reply, name)
  for i = 1, #reply, 2 do
    if reply[i] == name then return reply[i + 1] end
  end
  return nil
end
if rcall('EXISTS', eventsKey) == 1 then
  local last = field(rcall('XINFO', 'STREAM', eventsKey), 'last-generated-id')
  local settled = false
  for _, g in ipairs(rcall('XINFO', 'GROUPS', eventsKey)) do
    if field(g, 'name') == group then
      settled = tonumber(field(g, 'pending')) == 0 and field(g, 'last-delivered-id') == last
    end
  end
  if not settled then return { now, SKU_LIVE } end
end
rcall('DEL', shardKey, deadlinesKey, eventsKey, movesKey)
return { now, OK }
