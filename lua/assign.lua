--[[
  assign: decide who gets one inbound chat, atomically (the contract's rules 1-5).

  The number's rotation L (members with groups expanded, duplicates and users outside access
  dropped) and its expanded access are compiled into KEYS[8] and KEYS[9] whenever the account's
  configuration version (KEYS[7]) differs from the one they were compiled at, so a decision
  costs the same for 10 members as for 1,000.

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

  Output:
    {user, reason, at}   the decision; user is "" for unknown_disabled and no_admin.
                         A message decided before gets its first decision back, unchanged.
    {"!unknown_number"}  the number has no settings; nothing written
    {"!groups", NAME...} compiling needs groups missing from KEYS; call again with these
                         (every group members and access name); nothing written
]]
local rcall = redis.call

local settingsKey, membersKey, accessKey = KEYS[1], KEYS[2], KEYS[3]
local cursorKey, ownersKey, presenceKey = KEYS[4], KEYS[5], KEYS[6]
local versionKey, rotationKey, allowedKey, stampKey = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local accountKey, dedupKey, dedupPrevKey = KEYS[11], KEYS[12], KEYS[13]

local customer, dedupField = ARGV[1], ARGV[2]
local now, dedupExpireAt = ARGV[3], ARGV[4]

local GROUP_PREFIX = 'group:'
local FIRST_GROUP_KEY, FIRST_GROUP_ARG = 14, 5
local BATCH = 1000 -- elements per variadic call, well under Lua's stack limit

-- A repeated message repeats its first decision and moves nothing.
local seen = rcall('HGET', dedupKey, dedupField) or rcall('HGET', dedupPrevKey, dedupField)
if seen then
  local user, reason, at = string.match(seen, '^([^|]*)|([^|]*)|(.*)$')
  return {user, reason, at}
end

local settings = rcall('HGETALL', settingsKey)
if #settings == 0 then
  return {'!unknown_number'}
end
local setting = {}
for i = 1, #settings, 2 do
  setting[settings[i]] = settings[i + 1]
end

local function decide(user, reason)
  rcall('HSET', dedupKey, dedupField, user .. '|' .. reason .. '|' .. now)
  rcall('PEXPIREAT', dedupKey, dedupExpireAt)
  return {user, reason, now}
end

local function groupName(entry)
  if string.sub(entry, 1, #GROUP_PREFIX) == GROUP_PREFIX then
    return string.sub(entry, #GROUP_PREFIX + 1)
  end
  return nil
end

-- Expands group:NAME entries in place; nil when a group's key was not passed.
local function expand(entries, groupKey)
  local users = {}
  for _, entry in ipairs(entries) do
    local name = groupName(entry)
    if name then
      if not groupKey[name] then
        return nil
      end
      for _, user in ipairs(rcall('LRANGE', groupKey[name], 0, -1)) do
        users[#users + 1] = user
      end
    else
      users[#users + 1] = entry
    end
  end
  return users
end

local function missingGroups(lists)
  local names, listed = {'!groups'}, {}
  for _, list in ipairs(lists) do
    for _, entry in ipairs(list) do
      local name = groupName(entry)
      if name and not listed[name] then
        listed[name] = true
        names[#names + 1] = name
      end
    end
  end
  return names
end

local function store(command, key, values)
  rcall('DEL', key)
  for i = 1, #values, BATCH do
    rcall(command, key, unpack(values, i, math.min(i + BATCH - 1, #values)))
  end
end

-- Rebuilds L and the expanded access. Returns whether access restricts the number and |L|,
-- or nil and the "!groups" reply when a group is missing.
local function compile(version)
  local groupKey = {}
  for i = FIRST_GROUP_ARG, #ARGV do
    groupKey[ARGV[i]] = KEYS[i - FIRST_GROUP_ARG + FIRST_GROUP_KEY]
  end
  local accessEntries = rcall('SMEMBERS', accessKey)
  local memberEntries = rcall('LRANGE', membersKey, 0, -1)
  local accessUsers = expand(accessEntries, groupKey)
  local memberUsers = expand(memberEntries, groupKey)
  if not accessUsers or not memberUsers then
    return nil, nil, missingGroups({accessEntries, memberEntries})
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
  store('RPUSH', rotationKey, rotation)
  store('SADD', allowedKey, accessUsers)
  rcall('SET', stampKey, version .. '|' .. (restricted and '1' or '0') .. '|' .. #rotation)
  return restricted, #rotation, nil
end

local state = rcall('MGET', versionKey, stampKey, cursorKey)
local version, stamp, cursor = state[1] or '0', state[2], tonumber(state[3] or '0')
local compiledAt, restricted, n
if stamp then
  compiledAt, restricted, n = string.match(stamp, '^([^|]*)|([01])|(%d+)$')
end
if compiledAt == version then
  restricted, n = restricted == '1', tonumber(n)
else
  local missing
  restricted, n, missing = compile(version)
  if missing then
    return missing
  end
end

local function admin()
  local user = setting['admin']
  if not user or user == '' then
    user = rcall('HGET', accountKey, 'admin')
  end
  return user ~= '' and user or false
end

-- Rule 1: a returning customer keeps an owner who may still use the number.
local owner = rcall('HGET', ownersKey, customer)
if owner then
  if not restricted or rcall('SISMEMBER', allowedKey, owner) == 1 or owner == admin() then
    return decide(owner, 'owner')
  end
end

-- Rule 2.
if setting['assign_unknown'] == '0' then
  return decide('', 'unknown_disabled')
end

-- Rule 3: the first eligible user of L from the cursor on; the cursor moves past them.
local onlineOnly = setting['online_only'] ~= '0'
for i = 0, n - 1 do
  local user = rcall('LINDEX', rotationKey, (cursor + i) % n)
  local eligible = true
  if onlineOnly then
    local status = rcall('HGET', presenceKey, user)
    eligible = status and string.lower(status) == 'available'
  end
  if eligible then
    rcall('INCRBY', cursorKey, i + 1)
    rcall('HSET', ownersKey, customer, user)
    return decide(user, 'round_robin')
  end
end

-- Rules 4 and 5.
local fallback = admin()
if fallback then
  rcall('HSET', ownersKey, customer, fallback)
  return decide(fallback, 'admin_fallback')
end
return decide('', 'no_admin')
