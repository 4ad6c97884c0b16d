--[[
  replay: put one dead letter back on an inbound stream and take it off the dead stream,
  atomically, so that of any number of replays running at once exactly one moves it.

  Both keys must be in one Cluster slot (always so on a single Redis); worker/dead.py moves
  letters whose streams are in different slots, or that have too many fields to unpack here,
  another way.

  Input:
    KEYS[1]  dead stream     stream  rota:dead
    KEYS[2]  inbound stream  stream  rota:inbound, or rota:inbound:N (the letter's account's)

    ARGV[1]   the dead letter's entry id on KEYS[1]
    ARGV[2..] the fields to add, name, value, name, value... (the letter without its
              dead-letter fields)

  Output:
    the new entry id on KEYS[2]; or false when the letter is no longer on KEYS[1] (another
    replay moved it), and nothing is written.
]]
local rcall = redis.call

local deadKey, inboundKey = KEYS[1], KEYS[2]
local deadId = ARGV[1]

local FIRST_FIELD_ARG = 2

if #rcall('XRANGE', deadKey, deadId, deadId) == 0 then
  return false
end
-- Added before deleted: if the XADD is refused (out of memory, a key of the wrong type) the
-- script stops before its first write, and the letter stays where it was.
local newId = rcall('XADD', inboundKey, '*', unpack(ARGV, FIRST_FIELD_ARG))
rcall('XDEL', deadKey, deadId)
return newId
