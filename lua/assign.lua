--[[
  assign: decide who gets one inbound chat, atomically (the contract's rules 1-5).

  Input:
    KEYS[1]  number settings      hash    rota:{A}:number:N   (assign_unknown, online_only, admin)
    KEYS[2]  members              list    rota:{A}:number:N:members
    KEYS[3]  access               set     rota:{A}:number:N:access
    KEYS[4]  cursor               string  rota:{A}:number:N:cursor
    KEYS[5]  owners               hash    rota:{A}:number:N:owners   customer -> user
    KEYS[6]  presence             hash    rota:{A}:presence          user -> status
    KEYS[7]  account settings     hash    rota:{A}:settings          (admin)
    KEYS[8]  decisions, this time bucket       hash  rota:{A}:dedup:B    NUMBER:MESSAGE_ID -> decision
    KEYS[9]  decisions, previous time bucket   hash  rota:{A}:dedup:B-1
    KEYS[10..] group lists, one per name in ARGV[5..], same order

    ARGV[1]  customer
    ARGV[2]  de-duplication field, NUMBER:MESSAGE_ID
    ARGV[3]  now, unix milliseconds (becomes the decision's `at`)
    ARGV[4]  unix milliseconds at which KEYS[8] may expire
    ARGV[5..] group names whose lists are KEYS[10..]

  Output:
    {user, reason, at}   the decision; user is "" for unknown_disabled and no_admin.
                         A message decided before gets its first decision back, unchanged.
    {"!unknown_number"}  the number has no settings; nothing written
    {"!groups", NAME...} members or access name groups missing from KEYS; call again with
                         these (every group they name); nothing written
]]
local rcall = redis.call

local settingsKey, membersKey, accessKey = KEYS[1], KEYS[2], KEYS[3]
local cursorKey, ownersKey, presenceKey = KEYS[4], KEYS[5], KEYS[6]
local accountKey, dedupKey, dedupPrevKey = KEYS[7], KEYS[8], KEYS[9]

local customer, dedupField = ARGV[1], ARGV[2]
local now, dedupExpireAt = ARGV[3], ARGV[4]

local GROUP_PREFIX = 'group:'
local FIRST_GROUP_KEY, FIRST_GROUP_ARG = 10, 5

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

local groupKey = {}
for i = FIRST_GROUP_ARG, #ARGV do
  groupKey[ARGV[i]] = KEYS[i - FIRST_GROUP_ARG + FIRST_GROUP_KEY]
end

-- Collects every group the number's lists name, for the "!groups" reply.
local function referencedGroups(lists)
  local names, seenName = {'!groups'}, {}
  for _, list in ipairs(lists) do
    for _, entry in ipairs(list) do
      if string.sub(entry, 1, #GROUP_PREFIX) == GROUP_PREFIX then
        local name = string.sub(entry, #GROUP_PREFIX + 1)
        if not seenName[name] then
          seenName[name] = true
          names[#names + 1] = name
        end
      end
    end
  end
  return names
end

-- Expands group:NAME entries in place; returns nil when a group's key was not passed.
local function expand(entries)
  local users = {}
  for _, entry in ipairs(entries) do
    if string.sub(entry, 1, #GROUP_PREFIX) == GROUP_PREFIX then
      local key = groupKey[string.sub(entry, #GROUP_PREFIX + 1)]
      if not key then
        return nil
      end
      for _, user in ipairs(rcall('LRANGE', key, 0, -1)) do
        users[#users + 1] = user
      end
    else
      users[#users + 1] = entry
    end
  end
  return users
end

local accessEntries = rcall('SMEMBERS', accessKey)
local accessUsers = expand(accessEntries)
if not accessUsers then
  return referencedGroups({accessEntries, rcall('LRANGE', membersKey, 0, -1)})
end
local allowed = nil -- nil: access is empty, everyone may use the number
if #accessEntries > 0 then
  allowed = {}
  for _, user in ipairs(accessUsers) do
    allowed[user] = true
  end
end

local admin = setting['admin']
if not admin or admin == '' then
  admin = rcall('HGET', accountKey, 'admin')
  if admin == '' then
    admin = false
  end
end

-- Rule 1: a returning customer keeps an owner who may still use the number.
local owner = rcall('HGET', ownersKey, customer)
if owner and (not allowed or allowed[owner] or owner == admin) then
  return decide(owner, 'owner')
end

-- Rule 2.
if setting['assign_unknown'] == '0' then
  return decide('', 'unknown_disabled')
end

local memberEntries = rcall('LRANGE', membersKey, 0, -1)
local expanded = expand(memberEntries)
if not expanded then
  return referencedGroups({accessEntries, memberEntries})
end
local rotation, placed = {}, {}
for _, user in ipairs(expanded) do
  if not placed[user] and (not allowed or allowed[user]) then
    placed[user] = true
    rotation[#rotation + 1] = user
  end
end

-- Rule 3: the first eligible user from the cursor on; the cursor moves past them.
local n = #rotation
if n > 0 then
  local onlineOnly = setting['online_only'] ~= '0'
  local cursor = tonumber(rcall('GET', cursorKey) or '0')
  for i = 0, n - 1 do
    local user = rotation[(cursor + i) % n + 1]
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
end

-- Rules 4 and 5.
if admin then
  rcall('HSET', ownersKey, customer, admin)
  return decide(admin, 'admin_fallback')
end
return decide('', 'no_admin')
