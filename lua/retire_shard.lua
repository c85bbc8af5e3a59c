--[[
  retire_shard.lua: the first half of a SKU's retirement on one shard (see
  src/store/retire.rs). It closes the shard's sale window at once, and once the shard holds
  no unit and has no move pending, marks it retired: its `:lim` goes, so that every script
  that needs a loaded shard (reserve, confirm, cancel, cancel_by_key, cart_line, restock,
  move_out, move_in) answers NO_SKU there from then on and writes nothing; load_shard.lua
  refuses a retired shard (SKU_LIVE). The `retired` event tells the ledger; the shard's keys
  are deleted by purge_shard.lua once its stream is settled.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  KEYS[4] pending outgoing moves of the shard
  ARGV[1] sku, ARGV[2] shard index

  Returns {now ms, code}:
    OK          retired now
    REPLAYED    retired before: nothing changed
    SKU_LIVE    the window was open and is closed now (call again: a refill that was under
                way has completed by then), or the shard holds units or has a move pending
                (call again once its holds are confirmed, cancelled or expired); from now on
                no reserve or cart line is taken there
    NO_SKU      the shard was never loaded (or is purged already): nothing changed
    FENCED      a repair owns the shard: nothing changed
  Events: closed {end ms} when the window closes now; retired {ms} when retired.
]]
local movesKey = KEYS[4]
prefetch({ ':fence', ':retired', ':lim', ':held', ':end' })
if fenced() then return { now, FENCED } end
if hget(':retired') then return { now, REPLAYED } end
if not hget(':lim') then return { now, NO_SKU } end

-- Retirement ends the sale: a window still open closes now, so that no new hold keeps the
-- shard from being retired.
local ends = num(':end')
local closing = ends == 0 or ends > now
if closing then
  hset(':end', now)
  emit('closed|' .. now)
end
if closing or num(':held') > 0 or rcall('HLEN', movesKey) > 0 then
  commit()
  return { now, SKU_LIVE }
end
hset(':retired', now)
emit('retired|' .. now)
commit()
rcall('HDEL', shardKey, ':lim')
return { now, OK }
