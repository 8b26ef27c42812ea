-- Feed events, each added to the stream once. KEYS[1] is the stream, then one "published"
-- marker per event; ARGV[1] unused (the worker's housekeeping trims the stream, never past
-- what a consumer group has not acknowledged: adapters/feed_trim.py), ARGV[2] the markers' TTL
-- in ms, then five values per event: its id, type, JSON document, signature ("" when the
-- worker has no signing key: the entry then carries none) and "1" to republish it (a
-- rebuild: the open work goes out again whatever the marker says). An event whose marker
-- exists was added before (an outbox row projected again): nothing is added.
local added = 0
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 5
  local fresh = redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[2])
  if ARGV[a + 4] == '1' and not fresh then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    fresh = true
  end
  if fresh then
    if ARGV[a + 3] == '' then
      redis.call('XADD', KEYS[1], '*',
                 'event_id', ARGV[a], 'type', ARGV[a + 1], 'event', ARGV[a + 2])
    else
      redis.call('XADD', KEYS[1], '*',
                 'event_id', ARGV[a], 'type', ARGV[a + 1], 'event', ARGV[a + 2],
                 'sig', ARGV[a + 3])
    end
    added = added + 1
  end
end
return added
