--[[
  decide: who gets each inbound chat of a batch for one number, atomically and in stream order
  (the contract's rules 1-5). One call decides every message the batch holds for the number:
  settings, cursor, compiled rotation and the owners of the batch's customers are read once,
  presence as far as the walk needs it, every decision is made in Lua memory, and owners,
  cursor and de-duplication records are written once at the end.

  The number's rotation L (members with groups expanded, duplicates and users outside access
  dropped) and its expanded access are compiled into KEYS[8] and KEYS[9] whenever the account's
  configuration version (KEYS[7]) differs from the one they were compiled at, or they are not
  what the stamp (KEYS[10]) says they are (missing, of another size or type).

  Rule 3 walks L from the cursor. Places are read CHUNK at a time (fewer for a call of fewer
  entries: one message reads one place) with their users' presence, so a call reads about as
  many places as the batch moves the cursor over. A walk that passes
  FULL_AFTER places without an eligible user (a night shift: 1,000 members, one available)
  reads all of L and its presence once, and from then on every message of the call finds its
  user by binary search among the eligible places: the cost per message no longer grows with
  the members.

  Redis does not undo what a script wrote before it failed, so the script runs in two halves:
  the first reads and decides everything and writes nothing; the second only writes, with
  commands that cannot fail on what the first half checked (out of memory, Redis refuses a
  script's first write only). A key of the wrong type or a value the script cannot use
  (written by hand) makes "!invalid_data" the reply of every message that needed it.

  A status counts as available trimmed of whitespace and in any case; a presence value longer
  than any status is measured (HSTRLEN), never read.

  Input:
    KEYS[1]  number settings   hash    rota:{A}:number:N          assign_unknown, online_only, admin
    KEYS[2]  members           list    rota:{A}:number:N:members
    KEYS[3]  access            set     rota:{A}:number:N:access
    KEYS[4]  cursor            string  rota:{A}:number:N:cursor
    KEYS[5]  owners            hash    rota:{A}:number:N:owners   customer -> user
    KEYS[6]  presence          hash    rota:{A}:presence          user -> status
    KEYS[7]  config version    string  rota:{A}:version           bumped by every change of
                                                                  members, access or groups
    KEYS[8]  compiled rotation list    rota:{A}:number:N:rotation  L
    KEYS[9]  compiled access   set     rota:{A}:number:N:allowed   expanded access
    KEYS[10] compile stamp     string  rota:{A}:number:N:compiled  "VERSION|RESTRICTED|SIZE"
    KEYS[11] account settings  hash    rota:{A}:settings          admin
    KEYS[12] decisions, this time bucket      hash  rota:{A}:dedup:B    NUMBER:MESSAGE_ID -> decision
    KEYS[13] decisions, previous time bucket  hash  rota:{A}:dedup:B-1
    KEYS[14..] group lists, one per name in ARGV[4..3+G], same order

    ARGV[1]  now, unix milliseconds (becomes each decision's `at`)
    ARGV[2]  unix milliseconds at which KEYS[12] may expire
    ARGV[3]  G, how many group names follow
    ARGV[4..3+G]  group names whose lists are KEYS[14..]
    ARGV[4+G..]   the entries, in stream order, three arguments each:
                  kind ("message"), customer, de-duplication field NUMBER:MESSAGE_ID

  A decision is remembered in KEYS[12] as the JSON array [user, reason, at] (at a string), so
  no user id can break it; records of the format before, "user|reason|at", are still read.
  Replies are arrays of bulk strings, which RESP frames by length: no user id breaks them.

  Output: four strings per entry, in the order given (a flat array, 4 x the entries):
    user, reason, at, new            the decision; user is "" for unknown_disabled and
                                     no_admin; new is "1" when this call decided, "0" when a
                                     message decided before (in an earlier call or earlier in
                                     this batch) got its first decision back
    "!unknown_number", "", "", ""    the number has no settings
    "!invalid_data", DETAIL, "", ""  a key of the wrong type or a value the script cannot use,
                                     named in DETAIL; nothing of that entry written
  or, for the whole call, an array holding one array:
    {{"!groups", NAME...}}           compiling needs groups missing from KEYS; call again with
                                     these (every group members and access name); nothing
                                     written
]]
local rcall = redis.call

local settingsKey, membersKey, accessKey = KEYS[1], KEYS[2], KEYS[3]
local cursorKey, ownersKey, presenceKey = KEYS[4], KEYS[5], KEYS[6]
local versionKey, rotationKey, allowedKey, stampKey = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local accountKey, dedupKey, dedupPrevKey = KEYS[11], KEYS[12], KEYS[13]

local now, dedupExpireAt, groupCount = ARGV[1], ARGV[2], tonumber(ARGV[3])

local FIRST_GROUP_ARG, FIRST_GROUP_KEY = 4, 14
local ENTRY_ARGS = 3
local AVAILABLE = 'available'
-- A presence value longer than this is no status (worker/presence.py has the same figure):
-- it counts as unavailable and is never read, so a huge value costs nothing.
local MAX_STATUS_BYTES = 64
local MAX_CURSOR_DIGITS = 15 -- exact in Lua's numbers, and far from INCRBY's overflow
local CHUNK = 32 -- places of L read at a time while walks are short (at most)
local FULL_AFTER = 64 -- a walk this long reads all of L once (see the header)
local BATCH = 1000 -- elements per variadic call, well under Lua's stack limit

if not string.match(now, '^%d+$') or not string.match(dedupExpireAt, '^%d+$')
    or not groupCount then
  return redis.error_reply('ARGV[1] and ARGV[2] must be unix milliseconds, ARGV[3] a count')
end
local firstEntryArg = FIRST_GROUP_ARG + groupCount
if (#ARGV - firstEntryArg + 1) % ENTRY_ARGS ~= 0 then
  return redis.error_reply('the entries after ARGV[3+G] must come in threes')
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

-- A variadic read or write of many values, BATCH at a time; reads' replies are joined.
local function chunked(key, command, values)
  local joined = {}
  for first = 1, #values, BATCH do
    local part = read(key, command, unpack(values, first, math.min(first + BATCH - 1, #values)))
    if type(part) == 'table' then
      for i = 1, #part do
        joined[#joined + 1] = part[i]
      end
    end
  end
  return joined
end

-- A remembered decision: user, reason, at; or "!invalid_data".
local function remembered(key, record, field)
  local reasons = {
    owner = true, unknown_disabled = true, round_robin = true,
    admin_fallback = true, no_admin = true,
  }
  if string.sub(record, 1, 1) == '[' then
    local ok, fields = pcall(cjson.decode, record)
    if ok and type(fields) == 'table' and #fields == 3 and type(fields[1]) == 'string'
        and reasons[fields[2]] and type(fields[3]) == 'string'
        and string.match(fields[3], '^%d+$') then
      return fields[1], fields[2], fields[3]
    end
  end
  -- The format before JSON: reason and at are the last two fields, the user is what is left.
  local user, reason, at = string.match(record, '^(.*)|([%l_]+)|(%d+)$')
  if user and reasons[reason] then
    return user, reason, at
  end
  invalid(key, 'holds a decision that cannot be read for ' .. field)
end

-- L and the expanded access from members, access and groups, in memory (the second half
-- stores them); or the whole call answers "!groups" when a group's key was not passed.
local function compile(version)
  local GROUP_PREFIX = 'group:'
  local groupKey = {}
  for i = FIRST_GROUP_ARG, firstEntryArg - 1 do
    groupKey[ARGV[i]] = KEYS[i - FIRST_GROUP_ARG + FIRST_GROUP_KEY]
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
  local accessEntries = read(accessKey, 'SMEMBERS')
  local memberEntries = read(membersKey, 'LRANGE', 0, -1)
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
  return {
    version = version, restricted = restricted, n = #rotation,
    rotation = rotation, allowed = allowed, accessUsers = accessUsers,
  }
end

-- The compiled keys' restricted and |L| when they are what the stamp says; else nil.
local function compiled(version, stamp)
  if not stamp then
    return nil
  end
  local compiledAt, restricted, n = string.match(stamp, '^(.*)|([01])|(%d+)$')
  local length = redis.pcall('LLEN', rotationKey) -- an error (wrong type): not a number
  if compiledAt ~= version or length ~= tonumber(n) then
    return nil
  end
  if restricted == '0' then
    return false, length
  end
  -- A restricting access that expands to nobody leaves no allowed key: compiled every time,
  -- which costs little, since its L is empty too.
  local members = redis.pcall('SCARD', allowedKey)
  if type(members) ~= 'number' or members == 0 then
    return nil
  end
  return true, length
end

-- What a call shares, read once by the first entry that needs it: the settings, the compiled
-- L (read lazily, see places), the owners of every customer of the batch. A failure is kept
-- and is the reply of every entry that needs it.
local number, numberFailure

local function readNumber(customers)
  local settings = read(settingsKey, 'HGETALL')
  if #settings == 0 then
    error({reply = {'!unknown_number'}}, 0)
  end
  local setting = {}
  for i = 1, #settings, 2 do
    setting[settings[i]] = settings[i + 1]
  end
  -- MGET answers nil for a key of another type too: GET tells which it is.
  local state = rcall('MGET', versionKey, stampKey, cursorKey)
  local version = state[1]
  if not version then
    read(versionKey, 'GET')
  end
  version = version or '0'
  local rebuilt
  local restricted, n = compiled(version, state[2])
  if restricted == nil then
    rebuilt = compile(version)
    restricted, n = rebuilt.restricted, rebuilt.n
  end
  local owners = {}
  local found = chunked(ownersKey, 'HMGET', customers)
  for i, customer in ipairs(customers) do
    local owner = found[i]
    owners[customer] = (owner and owner ~= '') and owner or false
  end
  return {
    setting = setting, rebuilt = rebuilt, restricted = restricted, n = n,
    rawCursor = state[3], owners = owners, mayUse = {},
    onlineOnly = setting['online_only'] ~= '0', assignUnknown = setting['assign_unknown'] ~= '0',
    chunk = math.min(CHUNK, #customers),
    places = rebuilt and rebuilt.rotation or {}, -- L by place + 1, as far as read
    available = {}, -- user -> whether available, as far as read
    eligible = nil, -- every eligible place, ascending, once all of L is read
  }
end

local function cursorOf(num)
  local cursor = num.rawCursor
  if num.cursor then
    return num.cursor
  end
  if not cursor then
    read(cursorKey, 'GET')
  end
  cursor = cursor or '0'
  local digits = string.match(cursor, '^%-?([1-9]%d*)$')
  if cursor ~= '0' and not (digits and #digits <= MAX_CURSOR_DIGITS) then
    invalid(cursorKey, 'is not a count (' .. string.sub(cursor, 1, 20) .. ')')
  end
  num.cursor = tonumber(cursor)
  return num.cursor
end

local function adminOf(num)
  if num.admin == nil then
    local user = num.setting['admin']
    if not user or user == '' then
      user = read(accountKey, 'HGET', 'admin')
    end
    num.admin = (user and user ~= '') and user or false
  end
  return num.admin
end

-- Presence of these users, into num.available: trimmed, any case; a value too long to be a
-- status is measured, not read.
local function readPresence(num, users)
  local unread, lengths, seen = {}, {}, {}
  for _, user in ipairs(users) do
    if num.available[user] == nil and not seen[user] then
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
  local statuses = chunked(presenceKey, 'HMGET', short)
  for _, user in ipairs(unread) do
    num.available[user] = false
  end
  for i, user in ipairs(short) do
    local status = statuses[i]
    num.available[user] = status == AVAILABLE
        or (status and string.lower(string.match(status, '^%s*(.-)%s*$')) == AVAILABLE) or false
  end
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
    users = read(rotationKey, 'LRANGE', first, last)
    for i, user in ipairs(users) do
      num.places[first + i] = user
    end
  end
  if num.onlineOnly then
    readPresence(num, users)
  end
end

local function eligibleAt(num, place)
  local user = num.places[place + 1]
  if not user or (num.onlineOnly and num.available[user] == nil) then
    readPlaces(num, place, math.min(place + num.chunk, num.n) - 1)
    user = num.places[place + 1]
  end
  return not num.onlineOnly or num.available[user]
end

-- Every eligible place, ascending, with all of L and its presence read.
local function eligiblePlaces(num)
  readPlaces(num, 0, num.n - 1)
  local found = {}
  for place, user in ipairs(num.places) do
    if not num.onlineOnly or num.available[user] then
      found[#found + 1] = place - 1
    end
  end
  return found
end

-- The first eligible place at or after `from` (0-based), going round; nil when none.
local function firstEligibleFrom(eligible, from)
  if #eligible == 0 then
    return nil
  end
  local low, high = 1, #eligible + 1
  while low < high do
    local middle = math.floor((low + high) / 2)
    if eligible[middle] < from then
      low = middle + 1
    else
      high = middle
    end
  end
  return eligible[low] or eligible[1]
end

-- Rule 3: the cursor's move to just past the first eligible user of L, and that user; nil when
-- nobody is eligible. Places and presence already read are looked up here, not through
-- eligibleAt: this runs once per message.
local function roundRobin(num)
  local n = num.n
  if n == 0 then
    return nil
  end
  local start = (num.cursor or cursorOf(num)) % n
  if not num.eligible then
    local places, available, onlineOnly = num.places, num.available, num.onlineOnly
    local walk = n < FULL_AFTER and n or FULL_AFTER
    for i = 0, walk - 1 do
      local place = (start + i) % n
      local user = places[place + 1]
      local eligible
      if user and not onlineOnly then
        eligible = true
      elseif user and available[user] ~= nil then
        eligible = available[user]
      else
        eligible = eligibleAt(num, place)
        user = places[place + 1]
      end
      if eligible then
        return i + 1, user
      end
    end
    if n <= FULL_AFTER then
      return nil
    end
    num.eligible = eligiblePlaces(num)
  end
  local place = firstEligibleFrom(num.eligible, start)
  if not place then
    return nil
  end
  return (place - start) % n + 1, num.places[place + 1]
end

-- Rules 1-5 for one customer: user, reason, the cursor's move, the new owner (nil for none).
local function decideOne(num, customer)
  -- Rule 1: a returning customer keeps an owner who may still use the number.
  local owner = num.owners[customer]
  if owner then
    local mayUse = num.mayUse[owner]
    if mayUse == nil then
      mayUse = not num.restricted
      if num.restricted and num.rebuilt then
        mayUse = num.rebuilt.allowed[owner] == true
      elseif num.restricted then
        mayUse = read(allowedKey, 'SISMEMBER', owner) == 1
      end
      num.mayUse[owner] = mayUse
    end
    if mayUse or owner == adminOf(num) then
      return owner, 'owner', 0
    end
  end
  -- Rule 2.
  if num.assignUnknown == false then
    return '', 'unknown_disabled', 0
  end
  -- Rule 3.
  local step, user = roundRobin(num)
  if step then
    return user, 'round_robin', step, user
  end
  -- Rules 4 and 5.
  local fallback = adminOf(num)
  if fallback then
    return fallback, 'admin_fallback', 0, fallback
  end
  return '', 'no_admin', 0
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

-- The first half: every entry's reply, and what the second half writes.
local function plan()
  local fields, customers, count = {}, {}, 0
  for i = firstEntryArg, #ARGV, ENTRY_ARGS do
    if ARGV[i] ~= 'message' then
      error('ARGV[' .. i .. '] is no kind of entry: ' .. string.sub(ARGV[i], 1, 20))
    end
    count = count + 1
    customers[count], fields[count] = ARGV[i + 1], ARGV[i + 2]
  end
  local replies = {} -- four strings per entry: see the header
  local writes = {records = {}, owners = {}, step = 0}
  local function refused(i, failure)
    local at = 4 * i - 3
    replies[at], replies[at + 1], replies[at + 2], replies[at + 3] = failure[1], failure[2] or '', '', ''
  end

  local records, failure = attempt(chunked, dedupKey, 'HMGET', fields)
  local previous
  if records then
    previous, failure = attempt(chunked, dedupPrevKey, 'HMGET', fields)
  end
  if failure then
    for i = 1, count do
      refused(i, failure)
    end
    return replies, writes
  end

  local decided = {} -- field -> the entry that decided it in this call
  local encoded = {} -- reason -> user -> the record, encoded once per call
  local newOwners, recordsWritten = writes.owners, writes.records
  local written = 0
  local current -- the entry being decided, for the failure it may raise
  -- Decides entries from `first` on; raises {reply = ...} for the entry `current`.
  local function decideFrom(first)
    for i = first, count do
      current = i
      local at = 4 * i - 3
      local field = fields[i]
      local earlier = decided[field]
      local record, recordKey = records[i], dedupKey
      if not record then
        record, recordKey = previous[i], dedupPrevKey
      end
      if earlier then
        local from = 4 * earlier - 3
        replies[at], replies[at + 1], replies[at + 2], replies[at + 3] =
          replies[from], replies[from + 1], replies[from + 2], '0'
      elseif record then
        local user, reason, decidedAt = remembered(recordKey, record, field)
        replies[at], replies[at + 1], replies[at + 2], replies[at + 3] =
          user, reason, decidedAt, '0'
      else
        if not number then
          if not numberFailure then
            number, numberFailure = attempt(readNumber, customers)
          end
          if not number then
            error({reply = numberFailure}, 0)
          end
        end
        local customer = customers[i]
        local user, reason, step, owner = decideOne(number, customer)
        if step > 0 then
          number.cursor = number.cursor + step
          writes.step = writes.step + step
        end
        if owner then
          number.owners[customer] = owner
          newOwners[customer] = owner
        end
        replies[at], replies[at + 1], replies[at + 2], replies[at + 3] = user, reason, now, '1'
        decided[field] = i
        local byUser = encoded[reason]
        if not byUser then
          byUser = {}
          encoded[reason] = byUser
        end
        local value = byUser[user]
        if not value then
          value = cjson.encode({user, reason, now})
          byUser[user] = value
        end
        recordsWritten[written + 1], recordsWritten[written + 2] = field, value
        written = written + 2
      end
    end
  end
  local first = 1
  while first <= count do
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
  return replies, writes
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
if #writes.records == 0 then
  return replies
end
local function store(command, key, values)
  for i = 1, #values, BATCH do
    rcall(command, key, unpack(values, i, math.min(i + BATCH - 1, #values)))
  end
end
local rebuilt = number and number.rebuilt
if rebuilt then
  rcall('DEL', rotationKey, allowedKey)
  store('RPUSH', rotationKey, rebuilt.rotation)
  store('SADD', allowedKey, rebuilt.accessUsers)
  rcall('SET', stampKey,
    rebuilt.version .. '|' .. (rebuilt.restricted and '1' or '0') .. '|' .. rebuilt.n)
end
if writes.step > 0 then
  rcall('INCRBY', cursorKey, writes.step)
end
local ownerPairs, paired = {}, 0
for customer, owner in pairs(writes.owners) do
  ownerPairs[paired + 1], ownerPairs[paired + 2] = customer, owner
  paired = paired + 2
end
if #ownerPairs > 0 then
  store('HSET', ownersKey, ownerPairs)
end
store('HSET', dedupKey, writes.records)
rcall('PEXPIREAT', dedupKey, dedupExpireAt)
return replies
