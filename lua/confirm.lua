--[[
  confirm.lua: the Confirm. Turns a hold into a sale; idempotent.

  A hold confirmed before it was swept keeps its units even past its deadline: expiring it
  and taking the same units again in one atomic step comes to the same thing. A hold that
  was already expired (its units returned) is confirmed late only if the shard can give the
  units again and the user's allowance allows them; a returned unit is never sold twice,
  because the re-take is an ordinary deduct of available stock.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] rid
  ARGV[4] the named caller asking, or "" (any caller)

  Returns {now ms, shard avail after, reply, reason}, reply {code, rid, state, user, qty,
  deadline ms, key, caller}:
    OK          confirmed now (state c)
    REPLAYED    was confirmed already
    CANCELLED   the hold was cancelled
    EXPIRED     expired, and the units could not be taken again; reason "stock" or "limit"
    NOT_FOUND   no such reservation in this shard
    CART_LINE   the hold is a cart's line: the cart is confirmed, not its lines
    NOT_OWNER   another named caller made the reservation: nothing changed
    NO_SKU      shard not loaded
    FENCED      a repair owns the shard: nothing changed, try again shortly
  Events: confirmed {rid, user, qty, late}; expired {rid, user, qty} for lazy expiry.
  A confirmed hold leaves the deadline index.
]]
local rid, caller = ARGV[3], ARGV[4]
prefetch({ ':fence', ':lim', ':avail', holdField(rid) })
if fenced() then return { now, 0, holdReply(FENCED), '' } end
local limit = tonumber(hget(':lim'))
if not limit then return { now, 0, holdReply(NO_SKU), '' } end
local h = loadHold(rid)
if not h then return { now, num(':avail'), holdReply(NOT_FOUND), '' } end
if cartLine(h) then return { now, num(':avail'), holdReply(CART_LINE, h), '' } end
if not owns(caller, h) then return { now, num(':avail'), holdReply(NOT_OWNER), '' } end
if h.state == 'c' then return { now, num(':avail'), holdReply(REPLAYED, h), '' } end
if h.state == 'x' then return { now, num(':avail'), holdReply(CANCELLED, h), '' } end

local late = 0
if h.state == 'h' then
  if now >= h.deadline then late = 1 end
  incr(':held', -h.qty)
else
  -- state e: the units went back to the shard; take them again if they are still free.
  local function short()
    if num(':avail') < h.qty then return 'stock' end
    if units(h.user) + h.qty > limit then return 'limit' end
    return nil
  end
  local reason = short()
  if reason and sweep(lazySweepMax) > 0 then reason = short() end
  if reason then
    commit()
    return { now, num(':avail'), holdReply(EXPIRED, h), reason }
  end
  late = 1
  incr(':avail', -h.qty)
  addUnits(h.user, h.qty)
end
incr(':sold', h.qty)
h.state = 'c'
storeHold(h)
zrems[#zrems + 1] = h.field
emit('confirmed|' .. rid .. '|' .. h.user .. '|' .. h.qty .. '|' .. late)
commit()
return { now, num(':avail'), holdReply(OK, h), '' }
