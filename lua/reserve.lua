--[[
  reserve.lua: the Try. Takes holds on one shard's stock for a batch of requests, each
  checked and deducted atomically; a batch of one is the plain case, larger batches are
  the engine coalescing concurrent reserves of a shard into one script call, which costs
  Redis far less per reservation (one TIME, HMGET, HSET, ZADD and XADD per batch).

  Guarantees, per request: the deduct, the user's allowance, the hold record, the deadline
  entry and the `reserved` event are written together or not at all; a shard's units are
  never held twice; a user never holds or owns more than the SKU's per-user limit in the
  shard (a user's home shard is the only one that serves them). When a request would fail
  for stock or limit, the script first returns up to 16 expired holds of the shard, once.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] number of requests n, then n times:
    rid       reservation id proposed by the caller (unique, random)
    user      user id
    qty       units wanted
    key       the client's idempotency key

  Returns {now ms, shard avail after, {reply 1, .., reply n}}, each reply
  {code, rid, state, qty, deadline ms} (user and key are the request's):
    OK             new hold (state h)
    REPLAYED       the key was seen with the same qty: the original reservation, as it is now
    KEY_REUSED     the key was seen with another qty
    KEY_CANCELLED  the key is barred by a cancel (by key, or of the reservation it made)
    BAD_QTY        qty not an integer in 1..limit
    NOT_STARTED, ENDED   outside the sale window
    LIMIT          the user's allowance in the shard would exceed the limit
    SHARD_EMPTY    this shard has fewer than qty units (the engine then moves stock here)
    DUPLICATE_ID   the proposed rid exists already (the caller draws another)
    NO_SKU         shard not loaded (every reply)
  Events: reserved {rid, user, qty, key, deadline}; expired {rid, user, qty} for lazy expiry.
]]
local n = tonumber(ARGV[3])
local fields = { ':lim', ':hold', ':start', ':end', ':avail', ':held', ':made' }
local keyFields = {}
for i = 1, n do
  local b = i * 4
  local keyField = ARGV[b + 1] .. ':' .. ARGV[b + 3]
  keyFields[i] = keyField
  fields[#fields + 1] = ARGV[b]
  fields[#fields + 1] = ARGV[b + 1]
  fields[#fields + 1] = keyField
end
prefetch(fields)

local replies = {}
local limit = tonumber(hget(':lim'))
if not limit then
  for i = 1, n do replies[i] = { NO_SKU, '', '', 0, 0 } end
  return { now, 0, replies }
end
local holdMs, startsAt, endsAt = num(':hold'), num(':start'), num(':end')

local swept = false
local function sweepOnce()
  if swept then return false end
  swept = true
  local expired = sweep(lazySweepMax)
  return expired > 0
end

local function refusal(code, h)
  if h then return { code, h.rid, h.state, h.qty, h.deadline } end
  return { code, '', '', 0, 0 }
end

local function reserveOne(rid, user, qty, key, keyField)
  if not qty or qty < 1 or qty > limit or qty % 1 ~= 0 then return refusal(BAD_QTY) end
  local known = hget(keyField)
  if known == BARRIER then return refusal(KEY_CANCELLED) end
  if known then
    local h = loadHold(known)
    if h.state == 'x' then return refusal(KEY_CANCELLED, h) end
    if h.qty ~= qty then return refusal(KEY_REUSED, h) end
    return refusal(REPLAYED, h)
  end
  if startsAt > 0 and now < startsAt then return refusal(NOT_STARTED) end
  if endsAt > 0 and now >= endsAt then return refusal(ENDED) end
  local used = num(user)
  if used + qty > limit then
    if not sweepOnce() then return refusal(LIMIT) end
    used = num(user)
    if used + qty > limit then return refusal(LIMIT) end
  end
  if num(':avail') < qty and (not sweepOnce() or num(':avail') < qty) then
    return refusal(SHARD_EMPTY)
  end
  if hget(rid) then return refusal(DUPLICATE_ID) end

  local deadline = now + holdMs
  incr(':avail', -qty)
  incr(':held', qty)
  incr(':made', 1)
  hset(user, used + qty)
  hset(keyField, rid)
  hset(rid, 'h|' .. user .. '|' .. qty .. '|' .. deadline .. '|' .. key)
  zadds[#zadds + 1] = deadline
  zadds[#zadds + 1] = rid
  emit('reserved|' .. rid .. '|' .. user .. '|' .. qty .. '|' .. key .. '|' .. deadline)
  return { OK, rid, 'h', qty, deadline }
end

for i = 1, n do
  local b = i * 4
  replies[i] = reserveOne(ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], keyFields[i])
end
commit()
return { now, num(':avail'), replies }
