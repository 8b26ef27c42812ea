-- KEYS: consumers hash.  ARGV: live-lease prefix, in-flight prefix.  Moves every dead
-- consumer's in-flight messages back to the head of their queues.
local moved = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local consumer, queues = entries[i], cjson.decode(entries[i + 1])
  if redis.call('EXISTS', ARGV[1] .. consumer) == 0 then
    for _, q in ipairs(queues) do
      local inflight = ARGV[2] .. consumer .. ':' .. q
      while redis.call('RPOPLPUSH', inflight, q) do moved = moved + 1 end
    end
    redis.call('HDEL', KEYS[1], consumer)
  end
end
return moved
