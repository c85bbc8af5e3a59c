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
  ARGV[6] the named caller asking, or "" (any caller)

  Returns {now ms, shard avail after, reply}, reply {code, rid, state, user, qty, deadline ms,
  key, caller}:
    OK          barrier recorded (empty rid), or the reservation cancelled (state x) or
                found expired (state e)
    REPLAYED    the barrier or the cancel was there already
    CONFIRMED   the key's reservation was confirmed: a sale is not cancelled here
    TOO_MANY_KEYS  the user has recorded maxKeys keys in this SKU: no barrier recorded
    NOT_OWNER   another named caller made the key's reservation: nothing changed
    NO_SKU      shard not loaded
    FENCED      a repair owns the shard: nothing changed
    STALE_ROUTE the shard was loaded for another shard count: reload the SKU, route again
  Events: barrier {user, key}; or cancelled / expired {rid, user, qty}.
]]
local user, key, caller = ARGV[3], ARGV[4], ARGV[6]
prefetch({ ':fence', ':shards', ':lim', ':avail', ':held', user })
if fenced() then return { now, 0, holdReply(FENCED) } end
if not hget(':lim') then return { now, 0, holdReply(NO_SKU) } end
if staleRoute(ARGV[5]) then return { now, 0, holdReply(STALE_ROUTE) } end
local known = keyEntry(user, key)
if known == BARRIER then return { now, num(':avail'), holdReply(REPLAYED) } end
if not known then
  if not addKey(user, key, BARRIER) then return { now, num(':avail'), holdReply(TOO_MANY_KEYS) } end
  incr(':made', 1)
  emit('barrier|' .. user .. '|' .. key)
  commit()
  return { now, num(':avail'), holdReply(OK) }
end

local h = loadHoldAt(known)
if not owns(caller, h) then return { now, num(':avail'), holdReply(NOT_OWNER) } end
local code = cancelHold(h)
commit()
return { now, num(':avail'), holdReply(code, h) }
