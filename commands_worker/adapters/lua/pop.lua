-- KEYS: unacked, unacked index, dead-letter inbox, queue keys...  ARGV: now, reason, most
-- Pops up to ``most`` messages (fewer when the queues run dry); returns key, item pairs, with
-- an empty item for a message that went to the dead-letter inbox.
local out, wanted = {}, tonumber(ARGV[3])
for i = 4, #KEYS do
  while #out < 2 * wanted do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    out[#out + 1] = KEYS[i]
    if record(item, KEYS[i], KEYS[1], KEYS[2], KEYS[3], ARGV[1]) then
      out[#out + 1] = item
    else
      out[#out + 1] = ''
    end
  end
end
if #out == 0 then return false end
return out
