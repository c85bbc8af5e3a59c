--[[
  cart_line.lua: one line of a cart, on the shard that serves the cart's user. A cart's
  lines live on the shards of several SKUs, so no one script can take them all; the cart's
  record (cart.lua) says what the cart is doing, and this script does each line's part of
  it. Every operation is idempotent, so that whoever finishes a cart (the engine that
  began it, or the maintenance pass after a crash) may repeat a step without harm.

  A line is a hold like any other (units held, the user's allowance, a `reserved` event)
  whose record names its cart ("|#<cart id>"). It has no key in its user's record (the
  cart's key is in the cart's record) and no deadline entry: the sweeper never expires it, and confirm.lua
  and cancel.lua refuse it (CART_LINE). Its cart expires it, with all its other lines.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] operation: take | confirm | release
  ARGV[4] rid, ARGV[5] cart id, ARGV[6] user
  take:    ARGV[7] qty, ARGV[8] the cart's deadline (ms), ARGV[9] the SKU's shard count
           the caller routed by, ARGV[10] the cart's idempotency key, ARGV[11] its lines,
           ARGV[12] the named caller that made the cart, or ""
  release: ARGV[7] the state the line ends in: x (cancelled or rolled back) or e (expired)

  Returns {now ms, shard avail after, reply}, reply {code, rid, state, user, qty, deadline
  ms, key, caller}. take:
    OK            the line is held (state h)
    REPLAYED      it was held already by this cart
    CANCELLED     the line was released before it was taken (the cart rolled back
                  meanwhile): it is not taken now, and never will be
    DUPLICATE_ID  the rid belongs to another hold (the caller draws another)
    BAD_QTY, NOT_STARTED, ENDED, LIMIT, SHARD_EMPTY   as reserve.lua
  confirm: OK (state c), REPLAYED, NOT_FOUND (no such line of this cart), CANCELLED or
           EXPIRED (the line was released: its cart is not confirming).
  release: OK (released now; or, when the line was never taken, a tombstone under its rid
           so that a take arriving late is refused), REPLAYED, CONFIRMED.
  Every operation: NO_SKU, FENCED; take also STALE_ROUTE.
  Events: cart {cart id, user, key, lines, deadline} then reserved {rid, user, qty,
  deadline, #cart[, caller]} (the cart's terms with every line: the ledger rebuilds the record
  from them); confirmed {rid, user, qty, late};
  cancelled or expired {rid, user, qty}; expired for lazy expiry of single holds.
]]
local op, rid, cart, user = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local field = holdField(rid)
prefetch({ ':fence', ':lim', ':shards', ':start', ':end', ':avail', ':held', field, user })
if fenced() then return { now, 0, holdReply(FENCED) } end
local limit = tonumber(hget(':lim'))
if not limit then return { now, 0, holdReply(NO_SKU) } end

local function reply(code, h)
  commit()
  return { now, num(':avail'), holdReply(code, h) }
end

local h = loadHoldAt(field)
if h and h.cart ~= cart then
  if op == 'take' then return reply(DUPLICATE_ID) end
  return reply(NOT_FOUND)
end

if op == 'take' then
  if staleRoute(ARGV[9]) then return reply(STALE_ROUTE) end
  if h then
    if h.state == 'h' then return reply(REPLAYED, h) end
    return reply(CANCELLED, h)
  end
  local qty, deadline = tonumber(ARGV[7]), tonumber(ARGV[8])
  if not qty or qty < 1 or qty > limit or qty % 1 ~= 0 then return reply(BAD_QTY) end
  local startsAt, endsAt = num(':start'), num(':end')
  if startsAt > 0 and now < startsAt then return reply(NOT_STARTED) end
  if endsAt > 0 and now >= endsAt then return reply(ENDED) end
  -- A shortage first returns expired single holds, once, as reserve.lua does.
  if units(user) + qty > limit and (not sweepOnce() or units(user) + qty > limit) then
    return reply(LIMIT)
  end
  if num(':avail') < qty and (not sweepOnce() or num(':avail') < qty) then
    return reply(SHARD_EMPTY)
  end
  incr(':avail', -qty)
  incr(':held', qty)
  incr(':made', 1)
  addUnits(user, qty)
  local caller = ARGV[12]
  h = { rid = rid, field = field, state = 'h', user = user, qty = qty, deadline = deadline, cart = cart, caller = caller }
  storeHold(h)
  emit('cart|' .. cart .. '|' .. user .. '|' .. ARGV[10] .. '|' .. ARGV[11] .. '|' .. deadline)
  local line = 'reserved|' .. rid .. '|' .. user .. '|' .. qty .. '|' .. deadline .. '|#' .. cart
  if caller ~= '' then line = line .. '|' .. caller end
  emit(line)
  return reply(OK, h)
end

if op == 'confirm' then
  if not h then return reply(NOT_FOUND) end
  if h.state == 'c' then return reply(REPLAYED, h) end
  if h.state == 'x' then return reply(CANCELLED, h) end
  if h.state == 'e' then return reply(EXPIRED, h) end
  local late = now >= h.deadline and 1 or 0
  incr(':held', -h.qty)
  incr(':sold', h.qty)
  h.state = 'c'
  storeHold(h)
  emit('confirmed|' .. rid .. '|' .. h.user .. '|' .. h.qty .. '|' .. late)
  return reply(OK, h)
end

if op == 'release' then
  local state = ARGV[7]
  if not h then
    -- Never taken: a take still on its way (from an engine that lost the cart to the
    -- maintenance pass) must find the line released, not free.
    h = { rid = rid, field = field, state = state, user = user, qty = 0, deadline = 0, cart = cart, caller = '' }
    storeHold(h)
    return reply(OK, h)
  end
  if h.state == 'c' then return reply(CONFIRMED, h) end
  if h.state ~= 'h' then return reply(REPLAYED, h) end
  release(h, state, state == 'e' and 'expired' or 'cancelled')
  return reply(OK, h)
end

return redis.error_reply('cart_line.lua: unknown operation ' .. tostring(op))
