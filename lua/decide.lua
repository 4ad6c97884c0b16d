--[[
  decide: every entry of a batch for one account, atomically and in stream order: inbound
  messages (the contract's rules 1-5 with the conversation settings) and the CRM's activity
  (heartbeat, replied, closed, transfer). One call reads each number's settings, cursor and
  compiled rotation once, the owners and open conversations of the batch's customers once,
  presence, heartbeats and open counts as far as the decisions need them, decides every entry
  in Lua memory, and writes what changed once at the end.

  A number's rotation L (members with groups expanded, duplicates and users outside access
  dropped) and its expanded access are compiled into its rotation and allowed keys whenever the
  account's configuration version differs from the one they were compiled at, or they are not
  what the stamp says they are (missing, of another size or type).

  Rule 3 walks L from the cursor. Places are read CHUNK at a time (fewer for a call of fewer
  entries: one message reads one place) with their users' presence, so a call reads about as
  many places as the batch moves the cursor over. A walk that passes FULL_AFTER places without
  an eligible user (a night shift: 1,000 members, one available) reads all of L and its
  presence once, and from then on the call keeps the eligible places in order and finds each
  message's user by binary search: the cost per message no longer grows with the members.

  Eligible (rule 3) is: in L; available, i.e. status `available` (trimmed, any case; a value
  longer than any status is measured with HSTRLEN, never read) and, with the account's
  presence_ttl_s, heard from within it (a heartbeat or a reply, at the time of its entry;
  `rota presence set` writes the heard hash itself); and, with the number's capacity, holding
  fewer open conversations on the number. A conversation opens when a message's decision gives
  it a user (counted for that user) and closes with a `closed` entry; a transfer moves it.

  Redis does not undo what a script wrote before it failed, so the script runs in two halves:
  the first reads and decides everything and writes nothing; the second only writes, with
  commands that cannot fail on what the first half checked (out of memory, Redis refuses a
  script's first write only). A key of the wrong type or a value the script cannot use
  (written by hand) makes "!invalid_data" the reply of every entry that needed it.

  Input:
    KEYS[1]  presence          hash    rota:{A}:presence        user -> status
    KEYS[2]  heard             hash    rota:{A}:heard           user -> unix ms last heard
    KEYS[3]  account settings  hash    rota:{A}:settings        admin, presence_ttl_s
    KEYS[4]  config version    string  rota:{A}:version         bumped by every change of
                                                                members, access or groups
    KEYS[5]  decisions, this time bucket      hash  rota:{A}:dedup:B     FIELD -> record
    KEYS[6]  decisions, previous time bucket  hash  rota:{A}:dedup:B-1
    KEYS[7]  event sequence    string  rota:{A}:events          numbers published events
    KEYS[8]  timers            zset    rota:{A}:timers          NUMBER:CUSTOMER -> deadline ms
                                                                (reply or queue wait); NUMBER ->
                                                                0 while its queue is not empty
    KEYS[9]  outbox            stream  rota:{A}:outbox          conversation events, until the
                                                                worker has published them
    then for each number j = 1..N, fourteen keys from KEYS[10 + 14 * (j - 1)]:
      +0 settings  hash    rota:{A}:number:N           assign_unknown, online_only, admin,
                                                       capacity, owner_online_only,
                                                       when_nobody, queue_max_wait_s,
                                                       reply_timeout_s
      +1 members   list    rota:{A}:number:N:members
      +2 access    set     rota:{A}:number:N:access
      +3 cursor    string  rota:{A}:number:N:cursor
      +4 owners    hash    rota:{A}:number:N:owners    customer -> user
      +5 rotation  list    rota:{A}:number:N:rotation  L, compiled
      +6 allowed   set     rota:{A}:number:N:allowed   the expanded access, compiled
      +7 stamp     string  rota:{A}:number:N:compiled  "VERSION|RESTRICTED|SIZE"
      +8 open      hash    rota:{A}:number:N:open      customer -> user holding it open
      +9 load      hash    rota:{A}:number:N:load      user -> open conversations held
      +10 replied  hash    rota:{A}:number:N:replied   customer -> 1 once its holder replied
      +11 queue    list    rota:{A}:number:N:queue     customers waiting, oldest first
      +12 queued   hash    rota:{A}:number:N:queued    customer -> unix ms it was queued
      +13 tried    hash    rota:{A}:number:N:tried     customer -> users (comma-separated) who
                                                       held the open conversation, once more
                                                       than its first user did
    then the group lists, one per name in ARGV, same order

    ARGV[1]  now, unix milliseconds (each decision's `at`, what timers are due by)
    ARGV[2]  unix milliseconds at which KEYS[5] may expire
    ARGV[3]  the account's name (in the events)
    ARGV[4]  N, the numbers
    ARGV[5]  G, the group names
    ARGV[6..5+N]        the numbers, in the order of their keys
    ARGV[6+N..5+N+G]    group names whose lists follow the numbers' keys
    ARGV[6+N+G..]       the entries, in stream order, seven arguments each:
      kind      message, heartbeat, replied, closed, transfer; or the sweep's timer (the
                customer's timer, if due) or queue (the number's queue served)
      number    j of the entry's number (0 for a heartbeat)
      customer  the customer ("" for a heartbeat and queue)
      field     the de-duplication field (the worker's: NUMBER:MESSAGE_ID for a message; ""
                for timer and queue, which are never remembered)
      user      the activity's user ("" for a message and closed)
      earlier   the position in this call of the last entry before it of the same number and
                customer, 0 for none
      sent      unix ms of the entry (its stream id): when a heartbeat or reply was heard

  A decision is remembered in KEYS[5] as a JSON array, [user, reason, at] or, for a transfer,
  [user, "transfer", at, previous, event]; at and event are strings.

  The queue (when_nobody = queue) is served first come, first served by rule 3 before a
  message of its number is decided, after every closed, transfer, replied, timer and queue
  entry of its number, and after a heartbeat (with a presence TTL) for every number of the
  call; with when_nobody no longer queue, what rule 3 cannot serve goes to the admin. Each
  conversation given to a user without a message is an event: XADDed to the outbox in the
  same call and returned, with the event sequence's next number.

  Output: a flat array: six strings per entry, in the order given, then nine per event, then
  one string:
    user, reason, at, new, previous, event
                           the decision. reason is a message's rule (owner, unknown_disabled,
                           round_robin, admin_fallback, no_admin, queued; user "" for the
                           second, the fifth and queued) or the entry's kind (heartbeat,
                           replied, closed, timer, queue: user "", nothing to publish;
                           transfer: the user, with the previous holder and the event's
                           sequence number). new is "1" when this call decided, "0" when the
                           entry had been decided before and this is that decision again.
    "!unknown_number", "", "", "", "", ""    the entry's number has no settings
    "!invalid_data", DETAIL, "", "", "", ""  a key of the wrong type or a value the script
                                             cannot use, named in DETAIL
    position, outbox id, number, customer, user, reason, previous, event, waited
                           an event, after the entry at `position` (1-based) in the order they
                           happened: reason round_robin or admin_fallback (from the queue,
                           waited = ms it waited), reply_timeout or admin_fallback (a timer)
    timed                  "1" when the account has timers or an outbox left, else "0"
  or, for the whole call, an array holding one array:
    {{"!groups", NAME...}}  compiling needs groups missing from KEYS; call again with these
                            (every group a number's members and access name); nothing written
]]
local rcall = redis.call

local presenceKey, heardKey, accountKey, versionKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dedupKey, dedupPrevKey, eventsKey = KEYS[5], KEYS[6], KEYS[7]
local timersKey, outboxKey = KEYS[8], KEYS[9]
local FIRST_NUMBER_KEY, NUMBER_KEYS = 10, 14

local now, dedupExpireAt, accountName = ARGV[1], ARGV[2], ARGV[3]
local numberCount, groupCount = tonumber(ARGV[4]), tonumber(ARGV[5])

local FIRST_NUMBER_ARG, ENTRY_ARGS = 6, 7
local AVAILABLE = 'available'
-- A presence value longer than this is no status (worker/presence.py has the same figure):
-- it counts as unavailable and is never read, so a huge value costs nothing.
local MAX_STATUS_BYTES = 64
local MAX_COUNT_DIGITS = 15 -- exact in Lua's numbers, and far from INCRBY's overflow
local CHUNK = 32 -- places of L read at a time while walks are short (at most)
local FULL_AFTER = 64 -- a walk this long reads all of L once (see the header)
local BATCH = 1000 -- elements per variadic call, well under Lua's stack limit
local REASONS = {
  owner = true, unknown_disabled = true, round_robin = true, admin_fallback = true,
  no_admin = true, queued = true, heartbeat = true, replied = true, closed = true,
  transfer = true,
}

if not string.match(now, '^%d+$') or not string.match(dedupExpireAt, '^%d+$')
    or not numberCount or not groupCount then
  return redis.error_reply('ARGV[1..5] must be unix ms, unix ms, an account, two counts')
end
local nowMs = tonumber(now)
local FIRST_GROUP_ARG = FIRST_NUMBER_ARG + numberCount
local firstEntryArg = FIRST_GROUP_ARG + groupCount
local firstGroupKey = FIRST_NUMBER_KEY + NUMBER_KEYS * numberCount
if (#ARGV - firstEntryArg + 1) % ENTRY_ARGS ~= 0 then
  return redis.error_reply('the entries after ARGV[5+N+G] must come in sevens')
end

-- Ends what is being decided with "!invalid_data", through the pcall that runs it.
local function invalid(key, problem)
  error({reply = {'!invalid_data', key .. ' ' .. problem}}, 0)
end

-- A read that ends what is being decided with "!invalid_data" when the key is of the wrong
-- type; any other refusal (an ACL) is Redis's, not the data's, and fails the call.
local function read(key, command, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    if string.sub(reply.err, 1, 9) == 'WRONGTYPE' then
      invalid(key, 'is of the wrong type for ' .. command)
    end
    error(reply, 0)
  end
  return reply
end

-- A variadic read of many values, BATCH at a time; the replies joined.
local function readMany(key, command, values)
  if #values == 0 then
    return {}
  elseif #values <= BATCH then
    return read(key, command, unpack(values))
  end
  local joined, count = {}, 0
  for first = 1, #values, BATCH do
    local part = read(key, command, unpack(values, first, math.min(first + BATCH - 1, #values)))
    for i = 1, #part do
      joined[count + i] = part[i]
    end
    count = count + #part
  end
  return joined
end

-- A count written by Rota (a cursor, an open count, a setting); or "!invalid_data".
local function count(key, value, what)
  if value == false or value == nil or value == '0' then
    return 0
  end
  local digits = string.match(value, '^%-?([1-9]%d*)$')
  if not (digits and #digits <= MAX_COUNT_DIGITS) then
    invalid(key, what .. ' is not a count (' .. string.sub(value, 1, 20) .. ')')
  end
  return tonumber(value)
end

local function hashOf(flat)
  local hash = {}
  for i = 1, #flat, 2 do
    hash[flat[i]] = flat[i + 1]
  end
  return hash
end

-- A remembered decision's user, reason, at, previous, event; or "!invalid_data".
local function remembered(key, record, field)
  if string.sub(record, 1, 1) == '[' then
    local ok, fields = pcall(cjson.decode, record)
    if ok and type(fields) == 'table' and (#fields == 3 or #fields == 5)
        and type(fields[1]) == 'string' and REASONS[fields[2]]
        and type(fields[3]) == 'string' and string.match(fields[3], '^%d+$')
        and (#fields == 3 or (type(fields[4]) == 'string' and type(fields[5]) == 'string')) then
      return fields[1], fields[2], fields[3], fields[4] or '', fields[5] or ''
    end
  end
  -- The format before JSON: reason and at are the last two fields, the user is what is left.
  local user, reason, at = string.match(record, '^(.*)|([%l_]+)|(%d+)$')
  if user and REASONS[reason] then
    return user, reason, at, '', ''
  end
  invalid(key, 'holds a decision that cannot be read for ' .. field)
end

-- The account's shared state, read once by the first entry that needs it.
local account
local function readAccount()
  local setting = hashOf(read(accountKey, 'HGETALL'))
  local version = rcall('MGET', versionKey)[1] -- nil for a key of another type too
  if not version then
    read(versionKey, 'GET')
  end
  return {
    setting = setting, version = version or '0',
    ttlMs = count(accountKey, setting['presence_ttl_s'], 'presence_ttl_s') * 1000,
    statusOk = {}, -- user -> whether the status is available, as far as read
    heard = {}, -- user -> unix ms last heard (0: never), as far as read or heard in this call
    heardChanged = {}, heardWrites = {}, -- users heard from in this call, in order
    numbers = {}, -- the numbers read, for a user's eligibility that changes
  }
end

local function accountState()
  if not account then
    account = readAccount()
  end
  return account
end

-- L and the expanded access of number `num` from members, access and groups, in memory (the
-- second half stores them); or the whole call answers "!groups" when a group is not passed.
local function compile(num)
  local GROUP_PREFIX = 'group:'
  local groupKey = {}
  for i = FIRST_GROUP_ARG, firstEntryArg - 1 do
    groupKey[ARGV[i]] = KEYS[firstGroupKey + i - FIRST_GROUP_ARG]
  end
  local function groupName(entry)
    if string.sub(entry, 1, #GROUP_PREFIX) == GROUP_PREFIX then
      return string.sub(entry, #GROUP_PREFIX + 1)
    end
    return nil
  end
  -- group:NAME entries expanded in place, empty entries dropped; nil for a group not passed.
  local function expand(entries)
    local users = {}
    for _, entry in ipairs(entries) do
      local name = groupName(entry)
      if name then
        if not groupKey[name] then
          return nil
        end
        for _, user in ipairs(read(groupKey[name], 'LRANGE', 0, -1)) do
          if user ~= '' then
            users[#users + 1] = user
          end
        end
      elseif entry ~= '' then
        users[#users + 1] = entry
      end
    end
    return users
  end
  local accessEntries = read(num.accessKey, 'SMEMBERS')
  local memberEntries = read(num.membersKey, 'LRANGE', 0, -1)
  local accessUsers, memberUsers = expand(accessEntries), expand(memberEntries)
  if not accessUsers or not memberUsers then
    local names, listed = {'!groups'}, {}
    for _, list in ipairs({accessEntries, memberEntries}) do
      for _, entry in ipairs(list) do
        local name = groupName(entry)
        if name and not listed[name] then
          listed[name] = true
          names[#names + 1] = name
        end
      end
    end
    error({call = names}, 0)
  end
  local restricted = #accessEntries > 0
  local allowed = {}
  for _, user in ipairs(accessUsers) do
    allowed[user] = true
  end
  local rotation, placed = {}, {}
  for _, user in ipairs(memberUsers) do
    if not placed[user] and (not restricted or allowed[user]) then
      placed[user] = true
      rotation[#rotation + 1] = user
    end
  end
  return {restricted = restricted, n = #rotation, rotation = rotation, allowed = allowed,
    accessUsers = accessUsers}
end

-- The compiled keys' restricted and |L| when they are what the stamp says; else nil.
local function compiled(num, version, stamp)
  if not stamp then
    return nil
  end
  local compiledAt, restricted, n = string.match(stamp, '^(.*)|([01])|(%d+)$')
  local length = redis.pcall('LLEN', num.rotationKey) -- an error (wrong type): not a number
  if compiledAt ~= version or length ~= tonumber(n) then
    return nil
  end
  if restricted == '0' then
    return false, length
  end
  -- A restricting access that expands to nobody leaves no allowed key: compiled every time,
  -- which costs little, since its L is empty too.
  local members = redis.pcall('SCARD', num.allowedKey)
  if type(members) ~= 'number' or members == 0 then
    return nil
  end
  return true, length
end

-- Number j's state, read once by its first entry: settings, compiled L (its places read
-- lazily), and, by entry position, the owner and the open holder of each of its entries'
-- customers before this call.
local function readNumber(j, positions, customers)
  local base = FIRST_NUMBER_KEY + NUMBER_KEYS * (j - 1)
  local num = {
    settingsKey = KEYS[base], membersKey = KEYS[base + 1], accessKey = KEYS[base + 2],
    cursorKey = KEYS[base + 3], ownersKey = KEYS[base + 4], rotationKey = KEYS[base + 5],
    allowedKey = KEYS[base + 6], stampKey = KEYS[base + 7], openKey = KEYS[base + 8],
    loadKey = KEYS[base + 9], repliedKey = KEYS[base + 10], queueKey = KEYS[base + 11],
    queuedKey = KEYS[base + 12], triedKey = KEYS[base + 13],
    name = ARGV[FIRST_NUMBER_ARG + j - 1], j = j,
  }
  local setting = hashOf(read(num.settingsKey, 'HGETALL'))
  if next(setting) == nil then
    error({reply = {'!unknown_number'}}, 0)
  end
  local acc = accountState()
  local state = rcall('MGET', num.stampKey, num.cursorKey)
  local restricted, n = compiled(num, acc.version, state[1])
  if restricted == nil then
    num.rebuilt = compile(num)
    restricted, n = num.rebuilt.restricted, num.rebuilt.n
  end
  if not state[2] then
    read(num.cursorKey, 'GET') -- nil for a key of another type too
  end
  num.cursor = count(num.cursorKey, state[2], 'the cursor')
  num.setting, num.restricted, num.n = setting, restricted, n
  num.onlineOnly = setting['online_only'] ~= '0'
  num.assignUnknown = setting['assign_unknown'] ~= '0'
  num.ownerOnlineOnly = setting['owner_online_only'] == '1'
  num.capacity = count(num.settingsKey, setting['capacity'], 'capacity')
  num.queueWhenNobody = setting['when_nobody'] == 'queue'
  num.maxWaitMs = count(num.settingsKey, setting['queue_max_wait_s'], 'queue_max_wait_s') * 1000
  num.replyMs = count(num.settingsKey, setting['reply_timeout_s'], 'reply_timeout_s') * 1000
  local waiting = read(num.queueKey, 'LLEN')
  -- The queue as the call leaves it: the Redis list's first `before` customers (read CHUNK
  -- at a time), then those queued in this call; served ones are popped from the head.
  num.queue = {before = waiting, items = {}, count = waiting, head = 1, live = waiting,
    poppedBefore = 0, removedBefore = {}, removedLater = {}, changed = false}
  num.places = num.rebuilt and num.rebuilt.rotation or {} -- L by place + 1, as far as read
  -- At least one place: a call with only the sweep's queue entry has no positions, and a
  -- chunk of 0 would read LRANGE p p-1 (nothing; at place 0, all of L) and walk past users.
  num.chunk = math.min(CHUNK, math.max(#positions, waiting, 1))
  num.load, num.loadDelta, num.mayUse = {}, {}, {}
  num.eligible = nil -- every eligible place, ascending, once all of L is read
  num.step = 0
  local owners = readMany(num.ownersKey, 'HMGET', customers)
  local holders = readMany(num.openKey, 'HMGET', customers)
  local queued = waiting > 0 and readMany(num.queuedKey, 'HMGET', customers) or {}
  num.ownerBefore, num.holderBefore, num.queuedBefore = {}, {}, {}
  for k, position in ipairs(positions) do
    local owner, holder = owners[k], holders[k]
    num.ownerBefore[position] = (owner and owner ~= '') and owner or false
    num.holderBefore[position] = (holder and holder ~= '') and holder or false
    num.queuedBefore[position] = queued[k] and count(num.queuedKey, queued[k], 'queued at') or false
  end
  num.positions, num.customers = positions, customers
  acc.numbers[#acc.numbers + 1] = num
  return num
end

local function adminOf(num)
  if num.admin == nil then
    local user = num.setting['admin']
    if not user or user == '' then
      user = accountState().setting['admin']
    end
    num.admin = (user and user ~= '') and user or false
  end
  return num.admin
end

-- Statuses and, with a presence TTL, heard times of these users, into the account's caches.
local function readPresence(users)
  local acc = accountState()
  local unread, lengths, seen = {}, {}, {}
  for _, user in ipairs(users) do
    if acc.statusOk[user] == nil and not seen[user] then
      seen[user] = true
      unread[#unread + 1] = user
      lengths[#unread] = read(presenceKey, 'HSTRLEN', user)
    end
  end
  local short = {}
  for i, user in ipairs(unread) do
    if lengths[i] >= #AVAILABLE and lengths[i] <= MAX_STATUS_BYTES then
      short[#short + 1] = user
    end
  end
  local statuses = readMany(presenceKey, 'HMGET', short)
  local heard = acc.ttlMs > 0 and readMany(heardKey, 'HMGET', unread) or {}
  for i, user in ipairs(unread) do
    acc.statusOk[user] = false
    if acc.ttlMs > 0 and acc.heard[user] == nil then
      acc.heard[user] = count(heardKey, heard[i], 'heard for ' .. user)
    end
  end
  for i, user in ipairs(short) do
    local status = statuses[i]
    acc.statusOk[user] = status == AVAILABLE
        or (status and string.lower(string.match(status, '^%s*(.-)%s*$')) == AVAILABLE) or false
  end
end

-- Whether a user is available now: the status read, and heard from within the TTL.
local function available(user)
  local acc = accountState()
  if acc.statusOk[user] == nil then
    readPresence({user})
  end
  if not acc.statusOk[user] then
    return false
  end
  if acc.ttlMs == 0 then
    return true
  end
  if acc.heard[user] == nil then
    acc.heard[user] = count(heardKey, read(heardKey, 'HGET', user), 'heard for ' .. user)
  end
  return nowMs - acc.heard[user] <= acc.ttlMs
end

-- The user's open conversations on the number, as this call leaves them so far.
local function loadOf(num, user)
  if num.load[user] == nil then
    num.load[user] = count(num.loadKey, read(num.loadKey, 'HGET', user), 'open count of ' .. user)
  end
  return num.load[user] + (num.loadDelta[user] or 0)
end

local function withinCapacity(num, user)
  return num.capacity == 0 or loadOf(num, user) < num.capacity
end

local function eligible(num, user)
  if num.onlineOnly and not available(user) then
    return false
  end
  return withinCapacity(num, user)
end

-- Places first..last of L (0-based, within 0..n-1) read, with their users' presence. L just
-- compiled is all in memory: its key still holds the L before.
local function readPlaces(num, first, last)
  local users = {}
  if num.rebuilt then
    for place = first, last do
      users[#users + 1] = num.places[place + 1]
    end
  else
    users = read(num.rotationKey, 'LRANGE', first, last)
    for i, user in ipairs(users) do
      num.places[first + i] = user
    end
  end
  if num.onlineOnly then
    readPresence(users)
  end
end

-- Every eligible place, ascending, with all of L, its presence and its open counts read;
-- and user -> place.
local function eligiblePlaces(num)
  readPlaces(num, 0, num.n - 1)
  if num.capacity > 0 then
    local unread = {}
    for _, user in ipairs(num.places) do
      if num.load[user] == nil then
        unread[#unread + 1] = user
      end
    end
    local loads = readMany(num.loadKey, 'HMGET', unread)
    for k, user in ipairs(unread) do
      num.load[user] = count(num.loadKey, loads[k], 'open count of ' .. user)
    end
  end
  local found, placeOf = {}, {}
  for place, user in ipairs(num.places) do
    placeOf[user] = place - 1
    if eligible(num, user) then
      found[#found + 1] = place - 1
    end
  end
  num.placeOf = placeOf
  return found
end

-- The position of the first place at or after `from` in an ascending list, #list + 1 if none.
local function search(list, from)
  local low, high = 1, #list + 1
  while low < high do
    local middle = math.floor((low + high) / 2)
    if list[middle] < from then
      low = middle + 1
    else
      high = middle
    end
  end
  return low
end

-- A user's eligibility on the number changed (a conversation opened or closed, a heartbeat):
-- its eligible places, once kept, follow.
local function refresh(num, user)
  local place = num.eligible and num.placeOf[user]
  if not place then
    return
  end
  local at = search(num.eligible, place)
  local listed = num.eligible[at] == place
  local now_ = eligible(num, user)
  if now_ and not listed then
    table.insert(num.eligible, at, place)
  elseif listed and not now_ then
    table.remove(num.eligible, at)
  end
end

-- Rule 3: the cursor's move to just past the first eligible user of L, and that user; nil when
-- nobody is eligible. Users in `skip` (a set; a reply timeout's) count as not eligible.
local function roundRobin(num, skip)
  local n = num.n
  if n == 0 then
    return nil
  end
  local start = num.cursor % n
  if not num.eligible then
    local places, statusOk = num.places, accountState().statusOk
    local walk = n < FULL_AFTER and n or FULL_AFTER
    for i = 0, walk - 1 do
      local place = (start + i) % n
      local user = places[place + 1]
      if not user or (num.onlineOnly and statusOk[user] == nil) then
        readPlaces(num, place, math.min(place + num.chunk, n) - 1)
        user = places[place + 1]
      end
      if eligible(num, user) and not (skip and skip[user]) then
        return i + 1, user
      end
    end
    if n <= FULL_AFTER then
      return nil
    end
    num.eligible = eligiblePlaces(num)
  end
  local list = num.eligible
  local first = search(list, start)
  for k = 0, #list - 1 do
    local place = list[(first - 1 + k) % #list + 1]
    local user = num.places[place + 1]
    if not (skip and skip[user]) then
      return (place - start) % n + 1, user
    end
  end
  return nil
end

-- Rule 1's owner when the owner may still take the customer, else nil.
local function ownerRule(num, owner, holder)
  if not owner then
    return nil
  end
  local mayUse = num.mayUse[owner]
  if mayUse == nil then
    mayUse = not num.restricted
    if num.restricted and num.rebuilt then
      mayUse = num.rebuilt.allowed[owner] == true
    elseif num.restricted then
      mayUse = read(num.allowedKey, 'SISMEMBER', owner) == 1
    end
    num.mayUse[owner] = mayUse
  end
  if not mayUse and owner ~= adminOf(num) then
    return nil
  end
  -- owner_online_only: only while the owner holds it open, or is online and within capacity.
  if num.ownerOnlineOnly and holder ~= owner
      and not (available(owner) and withinCapacity(num, owner)) then
    return nil
  end
  return owner
end

-- Rules 1-5 for a message: user, reason, the cursor's move, whether the user becomes owner.
-- A queued customer stays queued; with when_nobody = queue, rule 4 queues (reason queued).
local function decideMessage(num, owner, holder, queued)
  if queued then
    return '', 'queued', 0, false
  end
  local kept = ownerRule(num, owner, holder)
  if kept then
    return kept, 'owner', 0, false
  end
  if not num.assignUnknown then
    return '', 'unknown_disabled', 0, false
  end
  local step, user = roundRobin(num)
  if step then
    return user, 'round_robin', step, true
  end
  if num.queueWhenNobody then
    return '', 'queued', 0, false
  end
  local fallback = adminOf(num)
  if fallback then
    return fallback, 'admin_fallback', 0, true
  end
  return '', 'no_admin', 0, false
end

-- The conversation passes from `from` to `to` (false: nobody): open counts follow, and with a
-- capacity, the number's eligible places. Everything that may fail is read first.
local function hold(num, from, to)
  if from == to then
    return
  end
  local capped = num.capacity > 0
  if capped and from then
    eligible(num, from)
  end
  if capped and to then
    eligible(num, to)
  end
  local delta = num.loadDelta
  if from then
    delta[from] = (delta[from] or 0) - 1
  end
  if to then
    delta[to] = (delta[to] or 0) + 1
  end
  if capped and from then
    refresh(num, from)
  end
  if capped and to then
    refresh(num, to)
  end
end

-- A heartbeat or a reply heard from the user at `sent` (never moves a heard time back); with
-- a presence TTL, the eligible places of every number read follow.
local function heardFrom(user, sent)
  local acc = accountState()
  if acc.heard[user] == nil then
    acc.heard[user] = count(heardKey, read(heardKey, 'HGET', user), 'heard for ' .. user)
  end
  if sent <= acc.heard[user] then
    return
  end
  if acc.ttlMs > 0 then
    for _, num in ipairs(acc.numbers) do
      eligible(num, user)
    end
  end
  acc.heard[user] = sent
  if not acc.heardChanged[user] then
    acc.heardChanged[user] = true
    acc.heardWrites[#acc.heardWrites + 1] = user
  end
  if acc.ttlMs > 0 then
    for _, num in ipairs(acc.numbers) do
      refresh(num, user)
    end
  end
end

-- Runs a step that may end with a reply of its own: the step's result, or nil and that reply.
-- A whole-call reply ("!groups") is passed up; any other error (a fault of the script, or
-- Redis's refusal) fails the call, with nothing written.
local function attempt(step, ...)
  local ok, result = pcall(step, ...)
  if ok then
    return result
  end
  if type(result) == 'table' and result.reply then
    return nil, result.reply
  end
  error(result, 0)
end

local KINDS = {
  message = true, heartbeat = true, replied = true, closed = true, transfer = true,
  timer = true, queue = true,
}
local SWEEP = {timer = true, queue = true} -- the sweep's entries: never remembered

-- The customer's member of KEYS[8] (worker/keys.py's timer spells the same).
local function timerMember(num, customer)
  return num.name .. ':' .. customer
end

-- The i-th customer of the number's queue, the list read CHUNK at a time as needed.
local function queueItem(num, i)
  local q = num.queue
  if i <= q.before and q.items[i] == nil then
    local part = read(num.queueKey, 'LRANGE', i - 1, i + CHUNK - 2)
    for k, customer in ipairs(part) do
      q.items[i - 1 + k] = customer
    end
  end
  return q.items[i]
end

-- The first customer still waiting, or nil.
local function queueHead(num)
  local q = num.queue
  while q.head <= q.count do
    local customer = queueItem(num, q.head)
    local gone
    if q.head <= q.before then
      gone = q.removedBefore[customer]
    else
      gone = q.removedLater[q.head]
    end
    if customer and not gone then
      return customer
    end
    q.head = q.head + 1
  end
  return nil
end

-- A key the second half writes with `command` checked for its type once (a read before).
local checked = {}
local function writable(key, command)
  if not checked[key] then
    read(key, command)
    checked[key] = true
  end
end

-- The first half: every entry's reply, the events, and what the second half writes.
local function plan()
  local kinds, numberOf, customers, fields, users, root, sent = {}, {}, {}, {}, {}, {}, {}
  local entries = 0
  local positionsOf, customersOf = {}, {} -- number j -> its entries' positions, customers
  for i = firstEntryArg, #ARGV, ENTRY_ARGS do
    entries = entries + 1
    local kind, j, earlier = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 5])
    if not KINDS[kind] or not j or j > numberCount or (j == 0) ~= (kind == 'heartbeat')
        or not earlier or earlier >= entries then
      error('entry ' .. entries .. ' is not kind, number, customer, field, user, earlier, sent')
    end
    kinds[entries], numberOf[entries], customers[entries] = kind, j, ARGV[i + 2]
    fields[entries], users[entries] = ARGV[i + 3], ARGV[i + 4]
    sent[entries] = tonumber(ARGV[i + 6]) or nowMs
    -- Entries of one number and customer share the state of the first of them, their root.
    root[entries] = earlier > 0 and root[earlier] or entries
    if j > 0 then
      positionsOf[j] = positionsOf[j] or {}
      customersOf[j] = customersOf[j] or {}
      if kind ~= 'queue' then
        local k = #positionsOf[j] + 1
        positionsOf[j][k], customersOf[j][k] = entries, ARGV[i + 2]
      end
    end
  end

  local replies = {} -- six strings per entry: see the header
  local function reply(i, user, reason, at, new, previous, event)
    local first = 6 * i - 5
    replies[first], replies[first + 1], replies[first + 2] = user, reason, at
    replies[first + 3], replies[first + 4], replies[first + 5] = new, previous, event
  end
  local function refused(i, failure)
    reply(i, failure[1], failure[2] or '', '', '', '', '')
  end

  local writes = {records = {}, written = 0, events = 0, changes = 0, moves = {}}
  local records, failure = attempt(readMany, dedupKey, 'HMGET', fields)
  local previous
  if records then
    previous, failure = attempt(readMany, dedupPrevKey, 'HMGET', fields)
  end
  if failure then
    for i = 1, entries do
      refused(i, failure)
    end
    return replies, writes
  end

  local numbers, numberFailures = {}, {}
  -- A customer's conversation as the call leaves it so far, at its root's position (the
  -- queue's customers without an entry get positions after the entries').
  local roots = entries
  local owner, holder, replied, queuedAt, deadline, tried, touched = {}, {}, {}, {}, {}, {}, {}
  local ownerChanged, holderChanged, repliedChanged = {}, {}, {}
  local queuedChanged, deadlineChanged, triedChanged = {}, {}, {}
  local eventBase
  local encoded = {} -- reason -> user -> the record, encoded once per call
  local current -- the entry being decided, for the failure it may raise

  local function numberFor(j)
    if not numbers[j] then
      if numberFailures[j] then
        error({reply = numberFailures[j]}, 0)
      end
      numbers[j], numberFailures[j] = attempt(readNumber, j, positionsOf[j], customersOf[j])
      if not numbers[j] then
        error({reply = numberFailures[j]}, 0)
      end
    end
    return numbers[j]
  end

  -- The root's state from what was read before the call, on its first use.
  local function init(num, r)
    if not touched[r] then
      touched[r] = true
      owner[r], holder[r] = num.ownerBefore[r], num.holderBefore[r]
      queuedAt[r] = num.queuedBefore[r]
    end
  end

  -- The root of a queued customer: its entry's, or a new one read now.
  local function rootFor(num, customer)
    if not num.rootOf then
      num.rootOf = {}
      for k, position in ipairs(num.positions) do
        num.rootOf[num.customers[k]] = root[position]
      end
    end
    local r = num.rootOf[customer]
    if r then
      init(num, r)
      return r
    end
    roots = roots + 1
    r = roots
    customers[r], numberOf[r], root[r], touched[r] = customer, num.j, r, true
    num.rootOf[customer] = r
    local ownerNow = read(num.ownersKey, 'HGET', customer)
    local holderNow = read(num.openKey, 'HGET', customer)
    owner[r] = (ownerNow and ownerNow ~= '') and ownerNow or false
    holder[r] = (holderNow and holderNow ~= '') and holderNow or false
    local since = read(num.queuedKey, 'HGET', customer)
    queuedAt[r] = since and count(num.queuedKey, since, 'queued at') or false
    return r
  end

  local function deadlineOf(num, r)
    if deadline[r] == nil then
      local score = read(timersKey, 'ZSCORE', timerMember(num, customers[r]))
      deadline[r] = score and tonumber(score) or false
    end
    return deadline[r]
  end

  local function setDeadline(r, at)
    writable(timersKey, 'ZCARD')
    deadline[r], deadlineChanged[r] = at, true
    writes.changes = writes.changes + 1
  end

  local function repliedOf(num, r)
    if replied[r] == nil then
      replied[r] = read(num.repliedKey, 'HEXISTS', customers[r]) == 1
    end
    return replied[r]
  end

  local function triedOf(num, r)
    if tried[r] == nil then
      local list = read(num.triedKey, 'HGET', customers[r])
      tried[r] = false
      if list then
        tried[r] = {}
        for user in string.gmatch(list, '[^,]+') do
          tried[r][#tried[r] + 1] = user
        end
      end
    end
    return tried[r]
  end

  local function setTried(num, r, list)
    writable(num.triedKey, 'HLEN')
    tried[r], triedChanged[r] = list, true
  end

  -- The list with the user added, unless in it.
  local function with(list, user)
    local copy = {}
    for k, held in ipairs(list) do
      if held == user then
        return list
      end
      copy[k] = held
    end
    copy[#copy + 1] = user
    return copy
  end

  local function nextEvent()
    if not eventBase then
      eventBase = count(eventsKey, read(eventsKey, 'GET'), 'the event sequence')
    end
    writes.events = writes.events + 1
    return tostring(eventBase + writes.events)
  end

  -- The conversation given to `user` by a rule, not a transfer: tried starts again, and the
  -- reply timer runs for round_robin and owner. `was` held it before (false: nobody).
  local function opened(num, r, reason, was)
    tried[r] = false
    if was then
      setTried(num, r, false)
    end
    if num.replyMs > 0 and (reason == 'round_robin' or reason == 'owner') then
      setDeadline(r, nowMs + num.replyMs)
    elseif was then
      setDeadline(r, false)
    end
  end

  -- The conversation given to `user` without a message: an event after entry `position`.
  local function give(num, r, user, reason, step, position, waited)
    local was = holder[r]
    hold(num, was, user)
    if step > 0 then
      num.cursor, num.step = num.cursor + step, num.step + step
    end
    if owner[r] ~= user then
      owner[r], ownerChanged[r] = user, true
    end
    holder[r], holderChanged[r] = user, true
    writable(outboxKey, 'XLEN')
    local moves = writes.moves
    moves[#moves + 1] = {position, num.name, customers[r], user, reason, was or '', nextEvent(),
      waited or ''}
    writes.changes = writes.changes + 1
    return was
  end

  local function enqueue(num, r)
    writable(num.queuedKey, 'HLEN')
    queuedAt[r], queuedChanged[r] = nowMs, true
    local q = num.queue
    q.count, q.live, q.changed = q.count + 1, q.live + 1, true
    q.items[q.count] = customers[r]
    q.laterIndex = q.laterIndex or {}
    q.laterIndex[customers[r]] = q.count
    if num.maxWaitMs > 0 then
      setDeadline(r, nowMs + num.maxWaitMs)
    end
    writes.changes = writes.changes + 1
  end

  -- The customer leaves the queue: served from its head (`served`), or taken out of it.
  local function unqueue(num, r, served)
    local q, customer = num.queue, customers[r]
    local later = q.laterIndex and q.laterIndex[customer]
    if served then
      if q.head <= q.before then
        q.poppedBefore = q.poppedBefore + 1
      end
      q.head = q.head + 1
    elseif later then
      q.removedLater[later] = true
    else
      q.removedBefore[customer] = true
      q.removedList = q.removedList or {}
      q.removedList[#q.removedList + 1] = customer
    end
    if later then
      q.laterIndex[customer] = nil
    end
    q.live, q.changed = q.live - 1, true
    local since = queuedAt[r]
    queuedAt[r], queuedChanged[r] = false, true
    setDeadline(r, false)
    return since and tostring(nowMs - since) or ''
  end

  -- Waiting conversations, oldest first, to users by rule 3 while anyone is eligible; with
  -- when_nobody no longer queue, the rest to the admin.
  local function serveQueue(num, position)
    while num.queue.live > 0 do
      local customer = queueHead(num)
      if not customer then
        return
      end
      local step, user = roundRobin(num)
      local admin = not step and not num.queueWhenNobody and adminOf(num)
      if not step and not admin then
        return
      end
      local r = rootFor(num, customer)
      local waited = unqueue(num, r, true)
      local reason = step and 'round_robin' or 'admin_fallback'
      local was = give(num, r, user or admin, reason, step or 0, position, waited)
      opened(num, r, reason, was)
    end
  end

  -- To the next eligible user by rule 3 who has not held it since it opened, with a new
  -- timer; when nobody is left, to the admin, without one; with no admin, it stays.
  local function replyTimeout(num, r, position)
    local was = holder[r]
    local list = triedOf(num, r) or {was}
    local skip = {}
    for _, user in ipairs(list) do
      skip[user] = true
    end
    local step, user = roundRobin(num, skip)
    local reason = 'reply_timeout'
    if not step then
      local admin = adminOf(num)
      if not admin or admin == was then
        return
      end
      step, user, reason = 0, admin, 'admin_fallback'
    end
    give(num, r, user, reason, step, position, '')
    if reason == 'reply_timeout' then
      setDeadline(r, nowMs + num.replyMs)
    end
    setTried(num, r, with(list, user))
  end

  local function timerDue(num, r, position)
    local due = deadlineOf(num, r)
    if not due or due > nowMs then
      return
    end
    setDeadline(r, false)
    if queuedAt[r] then
      local admin = adminOf(num)
      if admin then
        local waited = unqueue(num, r, false)
        local was = give(num, r, admin, 'admin_fallback', 0, position, waited)
        opened(num, r, 'admin_fallback', was)
      end
    elseif holder[r] and not repliedOf(num, r) then
      replyTimeout(num, r, position)
    end
  end

  -- The entry decided: user, reason, previous holder, event; its changes noted at its root.
  local function decideEntry(i)
    local kind, user = kinds[i], users[i]
    if kind == 'heartbeat' then
      heardFrom(user, sent[i])
      if accountState().ttlMs > 0 then
        for j = 1, numberCount do
          local num = attempt(numberFor, j) -- a number that fails is its entries' failure
          if num then
            serveQueue(num, i)
          end
        end
      end
      return '', 'heartbeat', '', ''
    end
    local num, r = numberFor(numberOf[i]), root[i]
    if kind == 'queue' then
      serveQueue(num, i)
      return '', 'queue', '', ''
    end
    init(num, r)
    if kind == 'message' then
      if num.queue.live > 0 then
        serveQueue(num, i - 1)
      end
      local holderNow = holder[r]
      local chosen, reason, step, owns = decideMessage(num, owner[r], holderNow, queuedAt[r])
      if reason == 'queued' then
        if not queuedAt[r] then
          enqueue(num, r)
        end
        return '', 'queued', '', ''
      end
      if step > 0 then
        num.cursor, num.step = num.cursor + step, num.step + step
      end
      if owns and chosen ~= owner[r] then
        owner[r], ownerChanged[r] = chosen, true
      end
      if chosen ~= '' and chosen ~= holderNow then
        hold(num, holderNow, chosen)
        holder[r], holderChanged[r] = chosen, true
        opened(num, r, reason, holderNow)
      end
      return chosen, reason, '', ''
    elseif kind == 'timer' then
      timerDue(num, r, i)
      serveQueue(num, i)
      return '', 'timer', '', ''
    elseif kind == 'transfer' then
      local was = holder[r]
      if queuedAt[r] then
        unqueue(num, r, false)
      end
      local event = nextEvent()
      hold(num, was, user)
      if user ~= owner[r] then
        owner[r], ownerChanged[r] = user, true
      end
      if user ~= was then
        holder[r], holderChanged[r] = user, true
      end
      if was then
        setTried(num, r, with(triedOf(num, r) or {was}, user))
      else
        tried[r] = false
      end
      replied[r], repliedChanged[r] = false, true
      setDeadline(r, false)
      serveQueue(num, i)
      return user, 'transfer', was or '', event
    elseif kind == 'closed' then
      if queuedAt[r] then
        unqueue(num, r, false)
      end
      if holder[r] then
        hold(num, holder[r], false)
        holder[r], holderChanged[r] = false, true
        replied[r], repliedChanged[r] = false, true
        setDeadline(r, false)
        setTried(num, r, false)
      end
      serveQueue(num, i)
      return '', 'closed', '', ''
    end
    -- replied: the holder's reply marks the conversation and stops its timer; any reply is
    -- a heartbeat.
    heardFrom(user, sent[i])
    if holder[r] == user then
      replied[r], repliedChanged[r] = true, true
      setDeadline(r, false)
    end
    serveQueue(num, i)
    return '', 'replied', '', ''
  end

  -- Decides entries from `first` on; raises {reply = ...} for the entry `current`.
  local function decideFrom(first)
    for i = first, entries do
      current = i
      local field = fields[i]
      local record, recordKey = records[i], dedupKey
      if not record then
        record, recordKey = previous[i], dedupPrevKey
      end
      if SWEEP[kinds[i]] then
        local _, reason = decideEntry(i)
        reply(i, '', reason, now, '1', '', '')
      elseif record then
        -- Decided before: its first decision again, and nothing of its customer changes.
        local user, reason, at, before, event = remembered(recordKey, record, field)
        reply(i, user, reason, at, '0', before, event)
      else
        local user, reason, before, event = decideEntry(i)
        reply(i, user, reason, now, '1', before, event)
        local byUser = encoded[reason]
        if not byUser then
          byUser = {}
          encoded[reason] = byUser
        end
        local value = byUser[user]
        if event ~= '' then
          value = cjson.encode({user, reason, now, before, event})
        elseif not value then
          value = cjson.encode({user, reason, now})
          byUser[user] = value
        end
        local list, n = writes.records, writes.written
        list[n + 1], list[n + 2] = field, value
        writes.written = n + 2
      end
    end
  end
  local first = 1
  while first <= entries do
    local ok, raised = pcall(decideFrom, first)
    if ok then
      break
    end
    if type(raised) ~= 'table' or not raised.reply then
      error(raised, 0) -- a whole-call answer ("!groups"), a fault, or Redis's refusal
    end
    refused(current, raised.reply)
    first = current + 1
  end
  writes.numbers, writes.roots, writes.customers, writes.numberOf = numbers, roots, customers, numberOf
  writes.root, writes.touched = root, touched
  writes.state = {owner = owner, holder = holder, replied = replied, queuedAt = queuedAt,
    deadline = deadline, tried = tried}
  writes.changed = {owner = ownerChanged, holder = holderChanged, replied = repliedChanged,
    queuedAt = queuedChanged, deadline = deadlineChanged, tried = triedChanged}
  return replies, writes
end

-- The reply's events and its last string (see the header), after the entries' replies.
local function finish(replies, moves, ids)
  for k, move in ipairs(moves) do
    local at = #replies
    replies[at + 1], replies[at + 2] = tostring(move[1]), ids[k] or ''
    for m = 2, 8 do
      replies[at + 1 + m] = move[m]
    end
  end
  replies[#replies + 1] = rcall('EXISTS', timersKey, outboxKey) > 0 and '1' or '0'
  return replies
end

local ok, replies, writes = pcall(plan)
if not ok then
  if type(replies) == 'table' and replies.call then
    return {replies.call}
  end
  if type(replies) == 'table' and not replies.err then
    error('decide.lua let a reply escape: ' .. cjson.encode(replies)) -- a fault of the script
  end
  error(replies, 0)
end

-- The second half: writes only, each on a key the first half found of the right type; nothing
-- when nothing was decided (the compiled L too: an entry refused writes nothing).
if writes.written == 0 and writes.changes == 0 then
  return finish(replies, writes.moves, {})
end
local function store(command, key, values)
  for i = 1, #values, BATCH do
    rcall(command, key, unpack(values, i, math.min(i + BATCH - 1, #values)))
  end
end
-- What the call leaves of each conversation it changed, held at its root.
local state, changed = writes.state, writes.changed
local timerWrites, timerDeletes = {}, {}
local changes = {}
-- The customer's field of a hash to write (`set`, value; true writes '1') or, for value false,
-- to delete (`unset`).
local function note(customer, set, unset, value)
  if value then
    set[#set + 1], set[#set + 2] = customer, value == true and '1' or value
  else
    unset[#unset + 1] = customer
  end
end
for r = 1, writes.roots do
  local j = writes.numberOf[r]
  if j > 0 and writes.root[r] == r and writes.touched[r] then
    local change = changes[j]
    if not change then
      change = {owners = {}, open = {}, closed = {}, replied = {}, unreplied = {}, queued = {},
        unqueued = {}, tried = {}, untried = {}}
      changes[j] = change
    end
    local customer = writes.customers[r]
    if changed.owner[r] then
      note(customer, change.owners, nil, state.owner[r])
    end
    if changed.holder[r] then
      note(customer, change.open, change.closed, state.holder[r])
    end
    if changed.replied[r] then
      note(customer, change.replied, change.unreplied, state.replied[r])
    end
    if changed.queuedAt[r] then
      local since = state.queuedAt[r]
      note(customer, change.queued, change.unqueued, since and tostring(since))
    end
    if changed.tried[r] then
      local users = state.tried[r]
      note(customer, change.tried, change.untried, users and table.concat(users, ','))
    end
    if changed.deadline[r] then
      local member = timerMember(writes.numbers[j], customer)
      if state.deadline[r] then
        timerWrites[#timerWrites + 1], timerWrites[#timerWrites + 2] = state.deadline[r], member
      else
        timerDeletes[#timerDeletes + 1] = member
      end
    end
  end
end
local function writeQueue(num)
  local q = num.queue
  if not q.changed then
    return
  end
  for _, customer in ipairs(q.removedList or {}) do
    rcall('LREM', num.queueKey, 1, customer)
  end
  if q.poppedBefore > 0 then
    rcall('LPOP', num.queueKey, q.poppedBefore)
  end
  local pushed = {}
  for i = math.max(q.head, q.before + 1), q.count do
    if not q.removedLater[i] then
      pushed[#pushed + 1] = q.items[i]
    end
  end
  store('RPUSH', num.queueKey, pushed)
  if q.live > 0 then
    timerWrites[#timerWrites + 1], timerWrites[#timerWrites + 2] = 0, num.name
  elseif q.before > 0 then
    timerDeletes[#timerDeletes + 1] = num.name
  end
end
for j, num in pairs(writes.numbers) do
  local rebuilt = num.rebuilt
  if rebuilt then
    rcall('DEL', num.rotationKey, num.allowedKey)
    store('RPUSH', num.rotationKey, rebuilt.rotation)
    store('SADD', num.allowedKey, rebuilt.accessUsers)
    rcall('SET', num.stampKey, account.version .. '|' .. (rebuilt.restricted and '1' or '0')
      .. '|' .. rebuilt.n)
  end
  if num.step > 0 then
    rcall('INCRBY', num.cursorKey, num.step)
  end
  local change = changes[j]
  if change then
    store('HSET', num.ownersKey, change.owners)
    store('HSET', num.openKey, change.open)
    store('HDEL', num.openKey, change.closed)
    store('HSET', num.repliedKey, change.replied)
    store('HDEL', num.repliedKey, change.unreplied)
    store('HSET', num.queuedKey, change.queued)
    store('HDEL', num.queuedKey, change.unqueued)
    store('HSET', num.triedKey, change.tried)
    store('HDEL', num.triedKey, change.untried)
  end
  for user, delta in pairs(num.loadDelta) do
    if delta ~= 0 then
      rcall('HINCRBY', num.loadKey, user, delta)
    end
  end
  writeQueue(num)
end
store('ZREM', timersKey, timerDeletes)
store('ZADD', timersKey, timerWrites)
if account and #account.heardWrites > 0 then
  local pairs_ = {}
  for _, user in ipairs(account.heardWrites) do
    pairs_[#pairs_ + 1] = user
    pairs_[#pairs_ + 1] = account.heard[user]
  end
  store('HSET', heardKey, pairs_)
end
if writes.events > 0 then
  rcall('INCRBY', eventsKey, writes.events)
end
local ids = {}
for k, move in ipairs(writes.moves) do
  ids[k] = rcall('XADD', outboxKey, '*', 'account', accountName, 'number', move[2],
    'customer', move[3], 'message_id', '', 'inbound_id', '', 'user', move[4], 'reason', move[5],
    'at', now, 'previous', move[6], 'event_id', accountName .. ':' .. move[7])
end
store('HSET', dedupKey, writes.records)
if writes.written > 0 then
  rcall('PEXPIREAT', dedupKey, dedupExpireAt)
end
return finish(replies, writes.moves, ids)
