--[[
  prelude.lua: shared by every script; src/scripts.rs prepends it to each file below.

  Every script works on exactly one shard. Its keys all carry the shard's hash tag
  `{<sku>:<n>}`, so the script is atomic on a single Redis and on Redis Cluster:
    KEYS[1]  shard hash: counters, config, user allowances, idempotency keys, holds
    KEYS[2]  deadline index: zset of held holds' fields ("~<token>") by deadline (ms)
    KEYS[3]  event stream: the shard's outbox
    ARGV[1]  sku, ARGV[2] shard index: copied into every event

  Shard hash fields. Counters and rules start with ':', which no id contains, so that the
  per-user fields can be the bare ids and the hot path builds as few strings as it can
  (string building is most of a script's own cost):
    :avail :held :sold        units available / held / sold in this shard
    :loaded :restocked        units put into this shard by load / restock
    :moved_in :moved_out      units moved into / out of this shard by stock moves
    :made                     reservations and barriers ever recorded (made > 0: live)
    :ver                      the shard's version: bumped by every call that changes it, so
                              that a restore applies only to the shard its snapshot saw
    :shards                   the SKU's shard count this shard was loaded for: a call routed
                              by another count (an engine's stale copy) is refused
    :fence                    present while a repair owns the shard: every call that would
                              change it is refused (FENCED) until the repair lifts it
    :lim :hold :start :end    per-user limit, hold ms, sale window in ms since epoch (0 = open)
    <user>                    the user's record: "<units>" (units the user holds or bought
                              in this shard), then "|<key>=~<token>" for each idempotency
                              key that made a hold, "|<key>=!" for each barrier; at most
                              maxKeys keys (the record stays one small field, read whole)
    ~<token>                  a hold, under the last 21 characters of its reservation id
                              "<sku>~<shard>~<token>" (the shard's tag names the rest):
                              "<state>|<user>|<qty>|<deadline ms>", then "|#<cart id>" for a
                              cart's line and "|@<caller>" when a named caller made it.
                              state: h held, c confirmed, x cancelled, e expired. A cart's
                              line has no key in its user's record and no deadline entry:
                              its cart decides its fate
  One reservation costs two fields (measured in README, "Redis memory"): every byte of them
  is paid for as long as the SKU lives, so nothing in them repeats what the shard's tag or
  the other field says.
    :o:<op> :i:<move> :x:<move>   applied restock ops, applied incoming moves, outgoing moves
  A shard hash may hold nothing but :fence: a repair fences a shard Redis lost before it
  rebuilds it, so that nothing is written there meanwhile.

  Events: each script call that changes anything appends one stream entry with fields
  sku, shard, ts (Redis time, ms) and ev: its events, one per line, in the order they
  happened, each "<kind>|<fields>" (rid = reservation id; late is 1 for a late confirm):
    reserved|rid|user|qty|deadline|key[|caller]   confirmed|rid|user|qty|late
    cancelled|rid|user|qty                  expired|rid|user|qty
    barrier|user|key                        restocked|qty|op
    cart|cart id|user|key|lines|deadline    (before each cart line's reserved: its cart)
    loaded|qty|limit|hold ms|start|end|shards
    moved_out|move|to shard|qty             moved_in|move|from shard|qty
    restored|qty                            (restore_shard.lua: the shard's new base)
    closed|end ms                           retired|ms   (retire_shard.lua)
  One entry per call keeps a coalesced reserve of many requests to a single XADD.

  Discipline: every read goes through hget (cached), every write is buffered by hset/emit
  and applied by commit() at the very end. A script therefore checks everything before it
  writes anything: Redis never rolls back a script that fails midway. Every call that may
  change the shard asks fenced() first, before anything else (a fenced shard may be empty).
  Time is Redis TIME, in ms; a hold is expired from its deadline on (now >= deadline).
]]
local rcall = redis.call
local shardKey, deadlinesKey, eventsKey = KEYS[1], KEYS[2], KEYS[3]
local sku, shard = ARGV[1], ARGV[2]

-- Result codes. They must match `ScriptCode` in src/scripts.rs.
local OK, REPLAYED, SHARD_EMPTY, LIMIT, NOT_STARTED, ENDED = 0, 1, 2, 3, 4, 5
local NO_SKU, BAD_QTY, KEY_REUSED, KEY_CANCELLED, NOT_FOUND = 6, 7, 8, 9, 10
local CANCELLED, CONFIRMED, EXPIRED, SKU_LIVE, DUPLICATE_ID, REPLACED = 11, 12, 13, 14, 15, 16
local FENCED, STALE_ROUTE, CART_LINE, TOO_MANY_KEYS, NOT_OWNER = 17, 18, 19, 20, 21

local BARRIER = '!'
-- Keys (reservations' and barriers') one user may record in one SKU: bounds the record.
local maxKeys = 16
-- Expired holds a script returns on its own when it meets a shortage (the sweeper does the rest).
local lazySweepMax = 16

local clock = rcall('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local cache, dirty = {}, {}
local zadds, zrems, events = {}, {}, {}

-- Seeds the read cache with fields already read (by an HMGET of the caller's).
local function remember(fields, values)
  for i, field in ipairs(fields) do
    if cache[field] == nil then cache[field] = values[i] end
  end
end

-- Reads many fields in one round trip; later hget calls are served from memory.
local function prefetch(fields)
  remember(fields, rcall('HMGET', shardKey, unpack(fields)))
end

local function hget(field)
  local value = cache[field]
  if value == nil then
    value = rcall('HGET', shardKey, field)
    cache[field] = value
  end
  return value
end

local function hset(field, value)
  cache[field] = value
  dirty[field] = true
end

-- Whether a repair owns the shard (see :fence above).
local function fenced()
  return hget(':fence') ~= false
end

-- Whether the caller routed by another shard count than the one this shard was loaded for.
local function staleRoute(routed)
  local shards = hget(':shards')
  return shards ~= false and tonumber(shards) ~= tonumber(routed)
end

local function num(field)
  return tonumber(hget(field)) or 0
end

local function incr(field, by)
  hset(field, num(field) + by)
end

-- An event is one line "<kind>|<field>|<field>..."; see "Events" above for each kind.
local function emit(line)
  events[#events + 1] = line
end

-- A hold's field: the last 21 characters of its reservation id, "~<token>".
local function holdField(rid)
  return string.sub(rid, -21)
end

-- The user's record, split: units held or bought, and the keys after them ("|k=v|...").
local function userRecord(user)
  local record = hget(user)
  if not record then return 0, '' end
  local units, keys = string.match(record, '^(%d+)(.*)$')
  return tonumber(units), keys
end

local function units(user)
  return (userRecord(user))
end

local function addUnits(user, by)
  local used, keys = userRecord(user)
  hset(user, (used + by) .. keys)
end

-- What `key` names in the user's record: a hold's field, BARRIER, or false.
local function keyEntry(user, key)
  local _, keys = userRecord(user)
  local at = string.find(keys, '|' .. key .. '=', 1, true)
  if not at then return false end
  return string.match(keys, '^[^|]*', at + #key + 2)
end

-- Records `key` in the user's record as `entry` (a hold's field or BARRIER); false, with
-- nothing written, when the user has recorded maxKeys keys already.
local function addKey(user, key, entry)
  local used, keys = userRecord(user)
  local _, count = string.gsub(keys, '|', '')
  if count >= maxKeys then return false end
  hset(user, used .. keys .. '|' .. key .. '=' .. entry)
  return true
end

-- A hold read from its field; its rid is rebuilt from the shard's sku and index.
local function loadHoldAt(field)
  local packed = hget(field)
  if not packed then return nil end
  local state, user, qty, deadline, tail = string.match(packed, '^(%a)|([^|]*)|(%d+)|(%d+)(.*)$')
  return {
    rid = sku .. '~' .. shard .. field, field = field, state = state, user = user,
    qty = tonumber(qty), deadline = tonumber(deadline),
    cart = string.match(tail, '|#([^|]*)'), caller = string.match(tail, '|@([^|]*)') or '',
  }
end

local function loadHold(rid)
  return loadHoldAt(holdField(rid))
end

-- Whether a hold is a cart's line (see cart_line.lua): only its cart confirms, cancels or
-- expires it.
local function cartLine(h)
  return h.cart ~= nil
end

-- Whether `caller` may act on the hold: anyone may when either side names no caller.
local function owns(caller, h)
  return caller == '' or h.caller == '' or h.caller == caller
end

local function storeHold(h)
  local tail = ''
  if h.cart then tail = '|#' .. h.cart end
  if h.caller ~= '' then tail = tail .. '|@' .. h.caller end
  hset(h.field, h.state .. '|' .. h.user .. '|' .. h.qty .. '|' .. h.deadline .. tail)
end

-- What made the hold, as replies carry it: "#<cart id>" for a cart's line, else the key
-- its user's record names it under.
local function origin(h)
  if h.cart then return '#' .. h.cart end
  local _, keys = userRecord(h.user)
  local at = string.find(keys .. '|', '=' .. h.field .. '|', 1, true)
  if not at then return '' end
  return string.match(string.sub(keys, 1, at - 1), '([^|]*)$')
end

-- The reply for one reservation: {code, rid, state, user, qty, deadline ms, key, caller}.
local function holdReply(code, h)
  if not h then return { code, '', '', '', 0, 0, '', '' } end
  return { code, h.rid, h.state, h.user, h.qty, h.deadline, origin(h), h.caller }
end

-- Gives a held hold's units back to the shard and its allowance back to the user.
local function release(h, state, kind)
  incr(':avail', h.qty)
  incr(':held', -h.qty)
  addUnits(h.user, -h.qty)
  h.state = state
  storeHold(h)
  if not h.cart then zrems[#zrems + 1] = h.field end
  emit(kind .. '|' .. h.rid .. '|' .. h.user .. '|' .. h.qty)
end

local function expire(h)
  release(h, 'e', 'expired')
end

-- The Cancel of one found hold, shared by cancel.lua and cancel_by_key.lua. A confirmed hold
-- is refused; a held one past its deadline is expired rather than cancelled.
local function cancelHold(h)
  if h.state == 'c' then return CONFIRMED end
  if h.state == 'x' then return REPLAYED end
  if h.state == 'h' then
    if now >= h.deadline then expire(h) else release(h, 'x', 'cancelled') end
  end
  return OK
end

-- Expires up to `limit` holds whose deadline has passed, oldest first. (A hold leaves the
-- index when it is confirmed, cancelled or expired; an entry without a held hold, which a
-- restore may leave, is dropped on the way.)
-- Returns how many holds expired and whether more entries are due.
local function sweep(limit)
  local due = rcall('ZRANGEBYSCORE', deadlinesKey, '-inf', now, 'LIMIT', 0, limit)
  local expired = 0
  for _, field in ipairs(due) do
    local h = loadHoldAt(field)
    if h and h.state == 'h' and not cartLine(h) then
      expire(h)
      expired = expired + 1
    end
    zrems[#zrems + 1] = field
  end
  return expired, #due == limit
end

-- The lazy sweep of a shortage: once per call, up to lazySweepMax expired holds. Returns
-- whether this call swept any (a second call returns false: look no further).
local swept = false
local function sweepOnce()
  if swept then return false end
  swept = true
  return sweep(lazySweepMax) > 0
end

-- Every call that changes the shard (and so emits) bumps its version with its writes.
local function commit()
  if #events > 0 then incr(':ver', 1) end
  local args = {}
  for field in pairs(dirty) do
    args[#args + 1] = field
    args[#args + 1] = cache[field]
  end
  if #args > 0 then rcall('HSET', shardKey, unpack(args)) end
  if #zadds > 0 then rcall('ZADD', deadlinesKey, unpack(zadds)) end
  if #zrems > 0 then rcall('ZREM', deadlinesKey, unpack(zrems)) end
  if #events > 0 then
    rcall('XADD', eventsKey, '*', 'sku', sku, 'shard', shard, 'ts', now, 'ev', table.concat(events, '\n'))
  end
end
