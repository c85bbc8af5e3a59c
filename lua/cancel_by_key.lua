--[[
  cancel_by_key.lua: the Cancel by (user, idempotency key), for a client that never learnt
  the reservation id. Idempotent.

  If the key made a reservation, that reservation is cancelled as by cancel.lua. If it made
  none ("empty rollback"), a barrier is recorded under the key, so that a reserve arriving
  later with it is refused ("anti-hanging"). Barriers live as long as the shard's data.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] user
  ARGV[4] idempotency key
  ARGV[5] the SKU's shard count the caller routed by

  Returns {now ms, shard avail after, reply}, reply {code, rid, state, user, qty, deadline ms, key}:
    OK          barrier recorded (empty rid), or the reservation cancelled (state x) or
                found expired (state e)
    REPLAYED    the barrier or the cancel was there already
    CONFIRMED   the key's reservation was confirmed: a sale is not cancelled here
    NO_SKU      shard not loaded
    FENCED      a repair owns the shard: nothing changed
    STALE_ROUTE the shard was loaded for another shard count: reload the SKU, route again
  Events: barrier {user, key}; or cancelled / expired {rid, user, qty}.
]]
local user, key = ARGV[3], ARGV[4]
local keyField = user .. ':' .. key
prefetch({ ':fence', ':shards', ':lim', ':avail', ':held', keyField })
if fenced() then return { now, 0, holdReply(FENCED) } end
if not hget(':lim') then return { now, 0, holdReply(NO_SKU) } end
if staleRoute(ARGV[5]) then return { now, 0, holdReply(STALE_ROUTE) } end
local known = hget(keyField)
if known == BARRIER then return { now, num(':avail'), holdReply(REPLAYED) } end
if not known then
  hset(keyField, BARRIER)
  incr(':made', 1)
  emit('barrier|' .. user .. '|' .. key)
  commit()
  return { now, num(':avail'), holdReply(OK) }
end

local h = loadHold(known)
local code = cancelHold(h)
commit()
return { now, num(':avail'), holdReply(code, h) }
