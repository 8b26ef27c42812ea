-- History entries into their requests' sorted sets, in one call. KEYS are the sets; ARGV[1]
-- is how many entries a set keeps (the newest), then three values per entry: the index of its
-- set in KEYS, its score (the store's sequence) and its JSON. The same entry added again is
-- the same member with the same score: nothing doubles.
local keep = tonumber(ARGV[1])
local touched = {}
for a = 2, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[a])]
  redis.call('ZADD', key, ARGV[a + 1], ARGV[a + 2])
  touched[key] = true
end
for key in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', key, 0, -keep - 1)
end
return 0
