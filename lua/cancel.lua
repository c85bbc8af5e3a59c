--[[
  cancel.lua: the Cancel of one reservation; idempotent.

  A held hold returns its units and the user's allowance, and its key is barred: a reserve
  arriving later with the same key is refused (anti-hanging). A hold found past its deadline
  is expired instead, and reported as such.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] rid
  ARGV[4] the named caller asking, or "" (any caller)

  Returns {now ms, shard avail after, reply}, reply {code, rid, state, user, qty, deadline ms,
  key, caller}:
    OK          cancelled now (state x), or found expired (state e)
    REPLAYED    was cancelled already
    CONFIRMED   the hold was confirmed: a sale is not cancelled here
    NOT_FOUND   no such reservation in this shard
    CART_LINE   the hold is a cart's line: the cart is cancelled, not its lines
    NOT_OWNER   another named caller made the reservation: nothing changed
    NO_SKU      shard not loaded
    FENCED      a repair owns the shard: nothing changed
  Events: cancelled {rid, user, qty}, or expired {rid, user, qty}.
]]
local rid, caller = ARGV[3], ARGV[4]
prefetch({ ':fence', ':lim', ':avail', ':held', holdField(rid) })
if fenced() then return { now, 0, holdReply(FENCED) } end
if not hget(':lim') then return { now, 0, holdReply(NO_SKU) } end
local h = loadHold(rid)
if not h then return { now, num(':avail'), holdReply(NOT_FOUND) } end
if cartLine(h) then return { now, num(':avail'), holdReply(CART_LINE, h) } end
if not owns(caller, h) then return { now, num(':avail'), holdReply(NOT_OWNER) } end
local code = cancelHold(h)
commit()
return { now, num(':avail'), holdReply(code, h) }
