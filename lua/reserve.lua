--[[
  reserve.lua: the Try. Takes holds on one shard's stock for a batch of requests, each
  checked and deducted atomically; a batch of one is the plain case, larger batches are
  the engine coalescing concurrent reserves of a shard into one script call, which costs
  Redis far less per reservation (one TIME, HMGET, HSET, ZADD and XADD per batch).

  Two paths, one outcome. The fast path serves the batch in plain locals when every request
  is a first reserve that fits (the common case during a sale, and most of a script's own
  cost is building strings and tables). Any other case (a repeated key, a shortage that
  may call for a lazy sweep, an id collision) sends the whole batch, from scratch, through
  the general path built on the prelude's cache; nothing is written before that choice.

  Guarantees, per request: the deduct, the user's allowance, the hold record, the deadline
  entry and the `reserved` event are written together or not at all; a shard's units are
  never held twice; a user never holds or owns more than the SKU's per-user limit in the
  shard (a user's home shard is the only one that serves them). When a request would fail
  for stock or limit, the script first returns up to 16 expired holds of the shard, once.

  KEYS[1] shard hash, KEYS[2] deadline index, KEYS[3] event stream (see prelude.lua)
  ARGV[1] sku, ARGV[2] shard index
  ARGV[3] the SKU's shard count the caller routed by (each user's home shard depends on it)
  ARGV[4] number of requests n, then n times:
    rid       reservation id proposed by the caller (unique, random)
    field     its hold's field, "~<token>" (built by the caller: strings cost here)
    user      user id
    qty       units wanted
    key       the client's idempotency key
    caller    the named caller making it, or ""

  Returns, from the fast path, {now ms, shard avail after, {code 1, .., code n}, deadline ms}
  (every new hold of the batch has that deadline); from the general path,
  {now ms, shard avail after, {reply 1, .., reply n}}, each reply
  {code, rid, state, qty, deadline ms, caller} (user and key are the request's). Codes:
    OK             new hold (state h)
    REPLAYED       the key was seen with the same qty: the original reservation, as it is now
    KEY_REUSED     the key was seen with another qty
    KEY_CANCELLED  the key is barred by a cancel (by key, or of the reservation it made)
    BAD_QTY        qty not an integer in 1..limit
    NOT_STARTED, ENDED   outside the sale window
    LIMIT          the user's allowance in the shard would exceed the limit
    TOO_MANY_KEYS  the user has recorded maxKeys keys in this SKU (reserves and barriers)
    NOT_OWNER      the key's reservation was made by another named caller
    SHARD_EMPTY    this shard has fewer than qty units (the engine then moves stock here)
    DUPLICATE_ID   the proposed rid exists already (the caller draws another)
    NO_SKU         shard not loaded (every reply)
    FENCED         a repair owns the shard: nothing changed (every reply)
    STALE_ROUTE    the shard was loaded for another shard count: the caller's copy of the
                   SKU is stale and a user's home shard may differ (every reply)
  Events: reserved {rid, user, qty, deadline, key[, caller]}; expired {rid, user, qty} for
  lazy expiry.
]]
local n = tonumber(ARGV[4])
local fields = { ':lim', ':hold', ':start', ':end', ':avail', ':held', ':made', ':fence', ':shards', ':ver' }
for i = 1, n do
  local b = i * 6 - 1
  fields[2 * i + 9], fields[2 * i + 10] = ARGV[b + 1], ARGV[b + 2]
end
local values = rcall('HMGET', shardKey, unpack(fields))

local replies = {}
local function refuseAll(code)
  for i = 1, n do replies[i] = { code, '', '', 0, 0, '' } end
  return { now, 0, replies }
end
if values[8] then return refuseAll(FENCED) end
local limit = tonumber(values[1])
if not limit then return refuseAll(NO_SKU) end
if values[9] and tonumber(values[9]) ~= tonumber(ARGV[3]) then return refuseAll(STALE_ROUTE) end
local holdMs = tonumber(values[2]) or 0
local startsAt, endsAt = tonumber(values[3]) or 0, tonumber(values[4]) or 0

-- The fast path. Returns nil, having written nothing, when a request needs the general path.
local function fastPath()
  local avail, held, made = tonumber(values[5]) or 0, tonumber(values[6]) or 0, tonumber(values[7]) or 0
  local version = tonumber(values[10]) or 0
  local deadline = now + holdMs
  -- Numbers become text once per batch, not once per request (Lua formats them with printf).
  local deadlineText = tostring(deadline)
  local seen, codes, writes, deadlines, lines = {}, {}, {}, {}, {}
  for i = 1, n do
    local b, v = i * 6 - 1, 2 * i + 9
    local rid, field, user, key, caller = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 4], ARGV[b + 5]
    local qty = tonumber(ARGV[b + 3])
    -- A user with a record (a replay, a barrier, an earlier hold), a taken id, or a second
    -- request of one user in the batch (the engine's batches have none) are for the
    -- general path.
    if values[v] or values[v + 1] or seen[user] then return nil end
    seen[user] = true
    if not qty or qty < 1 or qty > limit or qty % 1 ~= 0 then
      codes[i] = BAD_QTY
    elseif startsAt > 0 and now < startsAt then
      codes[i] = NOT_STARTED
    elseif endsAt > 0 and now >= endsAt then
      codes[i] = ENDED
    else
      if avail < qty then return nil end
      avail, held, made = avail - qty, held + qty, made + 1
      local hold = user .. '|' .. qty .. '|' .. deadlineText
      local line = 'reserved|' .. rid .. '|' .. hold .. '|' .. key
      if caller ~= '' then
        hold = hold .. '|@' .. caller
        line = line .. '|' .. caller
      end
      local w = #writes
      writes[w + 1], writes[w + 2] = user, qty .. '|' .. key .. '=' .. field
      writes[w + 3], writes[w + 4] = field, 'h|' .. hold
      deadlines[#deadlines + 1], deadlines[#deadlines + 2] = deadlineText, field
      lines[#lines + 1] = line
      codes[i] = OK
    end
  end
  if #lines > 0 then
    local w = #writes
    writes[w + 1], writes[w + 2] = ':avail', avail
    writes[w + 3], writes[w + 4] = ':held', held
    writes[w + 5], writes[w + 6] = ':made', made
    writes[w + 7], writes[w + 8] = ':ver', version + 1
    rcall('HSET', shardKey, unpack(writes))
    rcall('ZADD', deadlinesKey, unpack(deadlines))
    rcall('XADD', eventsKey, '*', 'sku', sku, 'shard', shard, 'ts', now, 'ev', table.concat(lines, '\n'))
  end
  return { now, avail, codes, deadline }
end

local fast = fastPath()
if fast then return fast end
remember(fields, values)

local function refusal(code, h)
  if h then return { code, h.rid, h.state, h.qty, h.deadline, h.caller } end
  return { code, '', '', 0, 0, '' }
end

local function reserveOne(rid, field, user, qty, key, caller)
  if not qty or qty < 1 or qty > limit or qty % 1 ~= 0 then return refusal(BAD_QTY) end
  local known = keyEntry(user, key)
  if known == BARRIER then return refusal(KEY_CANCELLED) end
  if known then
    local h = loadHoldAt(known)
    if not owns(caller, h) then return refusal(NOT_OWNER) end
    if h.state == 'x' then return refusal(KEY_CANCELLED, h) end
    if h.qty ~= qty then return refusal(KEY_REUSED, h) end
    return refusal(REPLAYED, h)
  end
  if startsAt > 0 and now < startsAt then return refusal(NOT_STARTED) end
  if endsAt > 0 and now >= endsAt then return refusal(ENDED) end
  if units(user) + qty > limit and (not sweepOnce() or units(user) + qty > limit) then
    return refusal(LIMIT)
  end
  if num(':avail') < qty and (not sweepOnce() or num(':avail') < qty) then
    return refusal(SHARD_EMPTY)
  end
  if hget(field) then return refusal(DUPLICATE_ID) end
  if not addKey(user, key, field) then return refusal(TOO_MANY_KEYS) end

  local deadline = now + holdMs
  incr(':avail', -qty)
  incr(':held', qty)
  incr(':made', 1)
  addUnits(user, qty)
  local h = { rid = rid, field = field, state = 'h', user = user, qty = qty, deadline = deadline, caller = caller }
  storeHold(h)
  zadds[#zadds + 1] = deadline
  zadds[#zadds + 1] = field
  local line = 'reserved|' .. rid .. '|' .. user .. '|' .. qty .. '|' .. deadline .. '|' .. key
  if caller ~= '' then line = line .. '|' .. caller end
  emit(line)
  return refusal(OK, h)
end

for i = 1, n do
  local b = i * 6 - 1
  replies[i] = reserveOne(ARGV[b], ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]), ARGV[b + 4], ARGV[b + 5])
end
commit()
return { now, num(':avail'), replies }
