-- Feed events, each added to the stream once. KEYS[1] is the stream, then one "published"
-- marker per event; ARGV[1] the stream's approximate length bound, ARGV[2] the markers' TTL
-- in ms, then three values per event: its id, type and JSON document. An event whose marker
-- exists was added before (an outbox row projected again): nothing is added.
local added = 0
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 3
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[2]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
               'event_id', ARGV[a], 'type', ARGV[a + 1], 'event', ARGV[a + 2])
    added = added + 1
  end
end
return added
