-- Shared by pop.lua and claim.lua (prepended to each): record ``item`` as unacked under its
-- delivery tag, or park it in the dead-letter inbox when it is not a message kombu could ever
-- deliver. The inbox entry is {queue, reason, raw, at}: the format dead_letter_inbox.py reads.
local function record(item, queue, unacked, index, inbox, now)
  local ok, msg = pcall(cjson.decode, item)
  local tag = nil
  if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
    tag = msg.properties.delivery_tag
  end
  if type(tag) ~= 'string' then
    redis.call('LPUSH', inbox, cjson.encode({queue = queue, reason = ARGV[2],
                                             raw = item, at = tonumber(now)}))
    return false
  end
  local di = msg.properties.delivery_info
  local ex, rk = '', ''
  if type(di) == 'table' then
    if type(di.exchange) == 'string' then ex = di.exchange end
    if type(di.routing_key) == 'string' then rk = di.routing_key end
  end
  redis.call('HSET', unacked, tag, '[' .. item .. ',' .. cjson.encode(ex) .. ','
             .. cjson.encode(rk) .. ']')
  redis.call('ZADD', index, now, tag)
  return true
end
