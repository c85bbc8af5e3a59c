--[[
  cart.lua: a cart's record, the one place that says what a cart is doing (no prelude).

  A cart's lines live on the shards of several SKUs (cart_line.lua); its record lives in a
  bucket of its own, written before any line is taken (the intent) and moved on, by
  compare-and-set, before and after each phase. Whoever drives a cart (the engine that
  began it, or the maintenance pass once a step's lease ran out) reads the state here and
  does the lines' part, which is idempotent; so a cart is finished or rolled back exactly
  once, whoever crashes where.

    opening ─▶ held ─▶ confirming ─▶ confirmed
       │          ├──▶ cancelling ─▶ cancelled
       │          └──▶ expiring   ─▶ expired     (the deadline passed before a confirm)
       └──▶ rolling_back ─▶ rolled_back          (a line was refused, or the engine that
                                                  opened it was lost)
  Only held, confirmed, cancelled and expired are ever shown to a client as the cart's
  status: the others are steps on the way (the client sees "pending" or waits).

  KEYS[1] bucket hash: field <cart id> -> the record (JSON), field <user>:<key> -> cart id
  KEYS[2] open carts: zset of cart id by when the maintenance pass is to look (ms): a held
          cart at its deadline, a cart in a step at the end of the step's lease; finished
          carts leave it
  ARGV[1] operation, ARGV[2] cart id, then per operation:
    open      ARGV[3] user, ARGV[4] key, ARGV[5] hold ms, ARGV[6] lease ms, ARGV[7] lines
              (JSON array of {sku, qty, rid}, in the order they are taken), ARGV[8] the
              named caller making it ("" for none), kept in the record
    move      ARGV[3] from state, ARGV[4] to state, ARGV[5] lease ms, ARGV[6] refusal
              (JSON, kept in the record when rolling back; "" for none)
    confirm   ARGV[3] lease ms, ARGV[4] the named caller asking ("" for any): held ->
              confirming, or expiring past the deadline
    cancel    ARGV[3] lease ms, ARGV[4] as confirm: held -> cancelling, or expiring
    take_over ARGV[3] lease ms: for the maintenance pass, a cart whose time came: opening
              -> rolling_back, held -> expiring, a step renewed for the taker
    restore   ARGV[3] the record (JSON) rebuilt from the ledger after Redis lost it, with
              its key; a cart in a step is due at once. Only where the record is missing.

  Returns {now ms, outcome, record JSON or ""}. Outcomes:
    open:      opened | replayed (the key made this cart before; its record)
    restore:   moved | unchanged (the record was there)
    move:      moved | conflict (the cart was not in the from state; its record)
    confirm, cancel, take_over: moved | unchanged (nothing to do from the state it is in)
    confirm, cancel: not_owner (another named caller made the cart: nothing changed)
    any:       missing (no such cart)
]]
local bucketKey, openKey = KEYS[1], KEYS[2]
local op, id = ARGV[1], ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local finished = { confirmed = true, cancelled = true, expired = true, rolled_back = true }

local function save(record, leaseMs)
  record.updated = now
  local text = cjson.encode(record)
  redis.call('HSET', bucketKey, id, text)
  if finished[record.state] then
    redis.call('ZREM', openKey, id)
  elseif record.state == 'held' then
    redis.call('ZADD', openKey, record.deadline, id)
  else
    redis.call('ZADD', openKey, now + leaseMs, id)
  end
  return text
end

if op == 'open' then
  local user, key = ARGV[3], ARGV[4]
  local keyField = user .. ':' .. key
  local known = redis.call('HGET', bucketKey, keyField)
  if known then
    return { now, 'replayed', redis.call('HGET', bucketKey, known) or '' }
  end
  local record = {
    id = id, user = user, key = key, state = 'opening',
    deadline = now + tonumber(ARGV[5]), created = now,
    lines = cjson.decode(ARGV[7]),
  }
  if ARGV[8] ~= '' then record.caller = ARGV[8] end
  redis.call('HSET', bucketKey, keyField, id)
  return { now, 'opened', save(record, tonumber(ARGV[6])) }
end

if op == 'restore' then
  if redis.call('HEXISTS', bucketKey, id) == 1 then return { now, 'unchanged', '' } end
  local record = cjson.decode(ARGV[3])
  redis.call('HSET', bucketKey, record.user .. ':' .. record.key, id)
  return { now, 'moved', save(record, 0) }
end

local text = redis.call('HGET', bucketKey, id)
if not text then return { now, 'missing', '' } end
local record = cjson.decode(text)

if op == 'move' then
  if record.state ~= ARGV[3] then return { now, 'conflict', text } end
  record.state = ARGV[4]
  if ARGV[6] ~= '' then record.refusal = cjson.decode(ARGV[6]) end
  if record.state == 'rolled_back' then
    -- Nothing was held: the key may make a cart again, as a refused reserve leaves none.
    redis.call('HDEL', bucketKey, record.user .. ':' .. record.key)
  end
  return { now, 'moved', save(record, tonumber(ARGV[5])) }
end

if op == 'confirm' or op == 'cancel' then
  if ARGV[4] ~= '' and record.caller and record.caller ~= ARGV[4] then
    return { now, 'not_owner', text }
  end
  if record.state ~= 'held' then return { now, 'unchanged', text } end
  if now >= record.deadline then
    record.state = 'expiring'
  elseif op == 'confirm' then
    record.state = 'confirming'
  else
    record.state = 'cancelling'
  end
  return { now, 'moved', save(record, tonumber(ARGV[3])) }
end

if op == 'take_over' then
  local leaseMs = tonumber(ARGV[3])
  if finished[record.state] then return { now, 'unchanged', text } end
  if record.state == 'held' then
    if now < record.deadline then return { now, 'unchanged', text } end
    record.state = 'expiring'
  elseif record.state == 'opening' then
    if (tonumber(redis.call('ZSCORE', openKey, id)) or 0) > now then
      return { now, 'unchanged', text }
    end
    record.state = 'rolling_back'
  elseif (tonumber(redis.call('ZSCORE', openKey, id)) or 0) > now then
    return { now, 'unchanged', text }
  end
  return { now, 'moved', save(record, leaseMs) }
end

return redis.error_reply('cart.lua: unknown operation ' .. tostring(op))
