--[[
  state_floor: the benchmark's lower bound, not Rota's script. For a batch of new customers of
  one number it reads and writes only what any decision under the contract must: the
  de-duplication records of this and the previous time bucket, the owners, the open
  conversations, the open counts and the cursor; and it gives each customer the next user of
  the compiled rotation, with no rule checked, nothing validated, and the leanest arguments
  and reply.

  Input:
    KEYS[1]  decisions, this time bucket      hash    rota:{A}:dedup:B
    KEYS[2]  decisions, previous time bucket  hash    rota:{A}:dedup:B-1
    KEYS[3]  owners                           hash    rota:{A}:number:N:owners
    KEYS[4]  open                             hash    rota:{A}:number:N:open
    KEYS[5]  load                             hash    rota:{A}:number:N:load
    KEYS[6]  cursor                           string  rota:{A}:number:N:cursor
    KEYS[7]  rotation                         list    rota:{A}:number:N:rotation, not empty
    ARGV[1]  now, unix milliseconds
    ARGV[2]  unix milliseconds at which KEYS[1] may expire
    ARGV[3..]  customer, de-duplication field: two per message, in stream order

  Output: the user of each message, in order.
]]
local dedupKey, dedupPrevKey, ownersKey, openKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local loadKey, cursorKey, rotationKey = KEYS[5], KEYS[6], KEYS[7]
local now, expireAt = ARGV[1], ARGV[2]

local customers, fields = {}, {}
for i = 3, #ARGV, 2 do
  customers[#customers + 1], fields[#fields + 1] = ARGV[i], ARGV[i + 1]
end
redis.call('HMGET', dedupKey, unpack(fields))
redis.call('HMGET', dedupPrevKey, unpack(fields))
redis.call('HMGET', ownersKey, unpack(customers))
redis.call('HMGET', openKey, unpack(customers))
local rotation = redis.call('LRANGE', rotationKey, 0, -1)
local cursor = tonumber(redis.call('GET', cursorKey) or '0')

local users, owners, records, load = {}, {}, {}, {}
for k, customer in ipairs(customers) do
  local user = rotation[(cursor + k - 1) % #rotation + 1]
  users[k] = user
  owners[2 * k - 1], owners[2 * k] = customer, user
  records[2 * k - 1], records[2 * k] = fields[k], user .. '|round_robin|' .. now
  load[user] = (load[user] or 0) + 1
end
redis.call('INCRBY', cursorKey, #customers)
redis.call('HSET', ownersKey, unpack(owners))
redis.call('HSET', openKey, unpack(owners))
for user, opened in pairs(load) do
  redis.call('HINCRBY', loadKey, user, opened)
end
redis.call('HSET', dedupKey, unpack(records))
redis.call('PEXPIREAT', dedupKey, expireAt)
return users
