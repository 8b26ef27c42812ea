-- Many documents per call. ARGV[1] is the views channel; then six values per document:
-- its key count, version, body, TTL in ms (0: none), index score and index member. Its keys
-- come in order in KEYS: the document's, and for a request the all-requests index, the index
-- of its new status and the other status indexes.
local written, k, a = 0, 1, 2
while a <= #ARGV do
  local nkeys, v = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local key, member, score = KEYS[k], ARGV[a + 5], ARGV[a + 4]
  local cur = redis.call('GET', key)
  local cv = cur and tonumber(string.match(cur, '^{"version":(%d+)'))
  if not (cv and cv >= v) then
    local ttl = tonumber(ARGV[a + 3])
    if ttl > 0 then
      redis.call('SET', key, ARGV[a + 2], 'PX', ttl)
    else
      redis.call('SET', key, ARGV[a + 2])
    end
    if nkeys > 1 then
      redis.call('ZADD', KEYS[k + 1], score, member)
      for i = k + 3, k + nkeys - 1 do redis.call('ZREM', KEYS[i], member) end
      redis.call('ZADD', KEYS[k + 2], score, member)
    end
    redis.call('PUBLISH', ARGV[1], key .. ' ' .. ARGV[a + 1])
    written = written + 1
  end
  k, a = k + nkeys, a + 6
end
return written
