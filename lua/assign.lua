--[[
  assign: decide who gets one inbound chat, atomically (the contract's rules 1-5).

  The number's rotation L (members with groups expanded, duplicates and users outside access
  dropped) and its expanded access are compiled into KEYS[8] and KEYS[9] whenever the account's
  configuration version (KEYS[7]) differs from the one they were compiled at, or they are not
  what the stamp (KEYS[10]) says they are (missing, of another size or type), so a decision
  costs the same for 10 members as for 1,000.

  Redis does not undo what a script wrote before it failed, so the script runs in two halves:
  the first reads and checks everything the decision needs and writes nothing; the second only
  writes, with commands that cannot fail on what the first half checked (out of memory, Redis
  refuses a script's first write only). A key of the wrong type or a value the script cannot
  use (written by hand) ends the first half with "!invalid_data".

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
    KEYS[14..] group lists, one per name in ARGV[5..], same order

    ARGV[1]  customer
    ARGV[2]  de-duplication field, NUMBER:MESSAGE_ID
    ARGV[3]  now, unix milliseconds (becomes the decision's `at`)
    ARGV[4]  unix milliseconds at which KEYS[12] may expire
    ARGV[5..] group names whose lists are KEYS[14..]

  A decision is remembered in KEYS[12] as the JSON array [user, reason, at] (at a string), so
  no user id can break it; records of the format before, "user|reason|at", are still read.
  Replies are arrays of bulk strings, which RESP frames by length: no user id breaks them.

  Output:
    {user, reason, at, new}  the decision; user is "" for unknown_disabled and no_admin; new is
                             "1" when this call decided, "0" when a message decided before got
                             its first decision back, unchanged
    {"!unknown_number"}      the number has no settings; nothing written
    {"!groups", NAME...}     compiling needs groups missing from KEYS; call again with these
                             (every group members and access name); nothing written
    {"!invalid_data", DETAIL} a key of the wrong type or a value the script cannot use, named
                             in DETAIL; nothing written
]]
local rcall = redis.call

local settingsKey, membersKey, accessKey = KEYS[1], KEYS[2], KEYS[3]
local cursorKey, ownersKey, presenceKey = KEYS[4], KEYS[5], KEYS[6]
local versionKey, rotationKey, allowedKey, stampKey = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local accountKey, dedupKey, dedupPrevKey = KEYS[11], KEYS[12], KEYS[13]

local customer, dedupField = ARGV[1], ARGV[2]
local now, dedupExpireAt = ARGV[3], ARGV[4]

local AVAILABLE = 'available'
-- A presence value longer than this is no status (worker/presence.py has the same figure):
-- it counts as unavailable and is never read, so a huge value costs nothing.
local MAX_STATUS_BYTES = 64
local MAX_CURSOR_DIGITS = 15 -- exact in Lua's numbers, and far from INCRBY's overflow

-- Top-level code runs on every call: the helpers of rare paths are defined inside them.

-- Ends the first half with "!invalid_data", through the pcall that runs it.
local function invalid(key, problem)
  error({reply = {'!invalid_data', key .. ' ' .. problem}}, 0)
end

-- A read that ends the first half with "!invalid_data" when the key is of the wrong type; any
-- other refusal (an ACL) is Redis's, not the data's, and stays an error.
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

-- The remembered decision: user, reason, at; or the first half ends with "!invalid_data".
local function remembered(key, record)
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
  invalid(key, 'holds a decision that cannot be read for ' .. dedupField)
end

-- L and the expanded access from members, access and groups, in memory (the second half
-- stores them); or the first half ends with "!groups" when a group's key was not passed.
local function compile(version)
  local GROUP_PREFIX, FIRST_GROUP_KEY, FIRST_GROUP_ARG = 'group:', 14, 5
  local groupKey = {}
  for i = FIRST_GROUP_ARG, #ARGV do
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
    error({reply = names}, 0)
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

-- Whether a user's status is available: trimmed, any case; a value too long to be a status is
-- measured, not read.
local function available(user)
  local length = read(presenceKey, 'HSTRLEN', user)
  if length < #AVAILABLE or length > MAX_STATUS_BYTES then
    return false
  end
  local status = read(presenceKey, 'HGET', user)
  return status == AVAILABLE or string.lower(string.match(status, '^%s*(.-)%s*$')) == AVAILABLE
end

local function adminOf(setting)
  local user = setting['admin']
  if not user or user == '' then
    user = read(accountKey, 'HGET', 'admin')
  end
  return (user and user ~= '') and user or false
end

-- The first half: everything read and checked, nothing written. An answer that needs no write
-- is raised as {reply = ...}; else it returns what the second half writes: {user, reason,
-- rebuilt = the compiled keys to store, step = the cursor's move, owner = the new owner}.
local function plan()
  if not string.match(now, '^%d+$') or not string.match(dedupExpireAt, '^%d+$') then
    error('ARGV[3] and ARGV[4] must be unix milliseconds')
  end

  -- A repeated message repeats its first decision and moves nothing.
  local record = read(dedupKey, 'HGET', dedupField)
  local recordKey = dedupKey
  if not record then
    record, recordKey = read(dedupPrevKey, 'HGET', dedupField), dedupPrevKey
  end
  if record then
    local user, reason, at = remembered(recordKey, record)
    error({reply = {user, reason, at, '0'}}, 0)
  end

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
  local version, cursor = state[1], state[3]
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

  -- Rule 1: a returning customer keeps an owner who may still use the number.
  local owner = read(ownersKey, 'HGET', customer)
  if owner and owner ~= '' then
    local mayUse = not restricted
    if restricted and rebuilt then
      mayUse = rebuilt.allowed[owner] == true
    elseif restricted then
      mayUse = read(allowedKey, 'SISMEMBER', owner) == 1
    end
    if mayUse or owner == adminOf(setting) then
      return {owner, 'owner', rebuilt = rebuilt}
    end
  end

  -- Rule 2.
  if setting['assign_unknown'] == '0' then
    return {'', 'unknown_disabled', rebuilt = rebuilt}
  end

  -- Rule 3: the first eligible user of L from the cursor on; the cursor moves past them.
  if n > 0 then
    if not cursor then
      read(cursorKey, 'GET')
    end
    cursor = cursor or '0'
    local digits = string.match(cursor, '^%-?([1-9]%d*)$')
    if cursor ~= '0' and not (digits and #digits <= MAX_CURSOR_DIGITS) then
      invalid(cursorKey, 'is not a count (' .. string.sub(cursor, 1, 20) .. ')')
    end
    cursor = tonumber(cursor)
    local onlineOnly = setting['online_only'] ~= '0'
    for i = 0, n - 1 do
      local user
      if rebuilt then
        user = rebuilt.rotation[(cursor + i) % n + 1]
      else
        user = read(rotationKey, 'LINDEX', (cursor + i) % n)
      end
      if not onlineOnly or available(user) then
        return {user, 'round_robin', rebuilt = rebuilt, step = i + 1, owner = user}
      end
    end
  end

  -- Rules 4 and 5.
  local fallback = adminOf(setting)
  if fallback then
    return {fallback, 'admin_fallback', rebuilt = rebuilt, owner = fallback}
  end
  return {'', 'no_admin', rebuilt = rebuilt}
end

local ok, decision = pcall(plan)
if not ok then
  if type(decision) == 'table' and decision.reply then
    return decision.reply
  end
  error(decision, 0) -- a fault of the script itself, or Redis's refusal; nothing was written
end

-- The second half: the record encoded, then writes only, each on a key the first half found
-- of the right type.
local user, reason = decision[1], decision[2]
local record = cjson.encode({user, reason, now})
local rebuilt = decision.rebuilt
if rebuilt then
  local BATCH = 1000 -- elements per variadic call, well under Lua's stack limit
  local function store(command, key, values)
    rcall('DEL', key)
    for i = 1, #values, BATCH do
      rcall(command, key, unpack(values, i, math.min(i + BATCH - 1, #values)))
    end
  end
  store('RPUSH', rotationKey, rebuilt.rotation)
  store('SADD', allowedKey, rebuilt.accessUsers)
  rcall('SET', stampKey,
    rebuilt.version .. '|' .. (rebuilt.restricted and '1' or '0') .. '|' .. rebuilt.n)
end
if decision.step then
  rcall('INCRBY', cursorKey, decision.step)
end
if decision.owner then
  rcall('HSET', ownersKey, customer, decision.owner)
end
rcall('HSET', dedupKey, dedupField, record)
rcall('PEXPIREAT', dedupKey, dedupExpireAt)
return {user, reason, now, '1'}
