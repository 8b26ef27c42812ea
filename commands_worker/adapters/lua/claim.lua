-- KEYS: in-flight list, unacked, unacked index, inbox.  ARGV: now, reason, item, queue key
-- 0: not ours any more; 1: claimed; 2: parked in the dead-letter inbox.
if redis.call('LREM', KEYS[1], 1, ARGV[3]) == 0 then
  return 0  -- our lease lapsed and the message went back to its queue: not ours any more
end
if record(ARGV[3], ARGV[4], KEYS[2], KEYS[3], KEYS[4], ARGV[1]) then return 1 end
return 2
