--[[
  delconsumer: remove a consumer from a group only if it holds nothing, atomically.

  Checking its pending count and then deleting it in a separate command would lose for good
  an entry delivered to it in between: XGROUP DELCONSUMER drops its pending entries.

  Input:
    KEYS[1]  inbound stream   stream  rota:inbound
    ARGV[1]  consumer group
    ARGV[2]  consumer name
    ARGV[3]  milliseconds: remove it only if idle at least this long (0: however idle)

  Output:
    1   removed
    0   kept: it holds pending entries, or was seen more recently than ARGV[3]
    -1  no such consumer in the group
]]
local rcall = redis.call

local streamKey = KEYS[1]
local group, consumer, minIdle = ARGV[1], ARGV[2], tonumber(ARGV[3])

for _, info in ipairs(rcall('XINFO', 'CONSUMERS', streamKey, group)) do
  local field = {}
  for i = 1, #info, 2 do
    field[info[i]] = info[i + 1]
  end
  if field['name'] == consumer then
    if field['pending'] ~= 0 or field['idle'] < minIdle then
      return 0
    end
    rcall('XGROUP', 'DELCONSUMER', streamKey, group, consumer)
    return 1
  end
end
return -1
