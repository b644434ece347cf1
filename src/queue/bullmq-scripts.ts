// The Redis scripts of the BullMQ queue (bullmq.ts): what CareRelay's Queue promises and
// BullMQ has no command for — cancel by key, reschedule with new data, the `cancelled` and
// `parked` states, a replay with exactly one more attempt, due times read on CareRelay's
// clock, and a retry or dead-letter that records the failure's class and code with the move.
// Each runs as one Lua script, so what it changes is atomic like BullMQ's own commands.
//
// They work on BullMQ's key layout (bullmq 5: `<prefix>:<queue>:` + wait | active | delayed |
// paused | prioritized | completed | failed | stalled | marker | meta | events, a hash per job
// at `<prefix>:<queue>:<job id>`, its lock at `…:<job id>:lock`) and follow its conventions:
// delayed scores are `due ms · 0x1000 + a counter` (includes/getDelayedScore.lua), a job made
// due is LPUSHed on wait and workers take from the right (FIFO), a job put on wait or moved
// earlier in delayed leaves a marker so blocked workers wake (includes/addBaseMarkerIfNeeded,
// addDelayMarkerIfNeeded), a paused queue parks due jobs on `paused`, events go to the stream.
// So BullMQ's workers, its stalled-job checker and its tooling keep working on these jobs.
//
// CareRelay's own fields in the job hash (BullMQ ignores fields it does not know):
//   crSeq      insertion order (ties between equal due times), from `cr:seq`
//   crRunAt    due time, epoch ms on the queue's clock
//   crMax      attempts allowed (retryDead: attempts started + 1)
//   crIdem     1 when the job is idempotent (an ambiguous failure may be retried)
//   crKeys     its cancel keys, JSON (for reading back; look-ups use the `cr:key:<key>` sets)
//   crState    'cancelled' | 'parked' (every other state is where BullMQ keeps the job)
//   crErrRun   the attempt whose outcome wrote crErrClass/crErrCode: an attempt started
//              (BullMQ's `ats`) with no outcome written was lost with its worker (lease_expired)
//   crErrClass, crErrCode, crReason (cancel reason), crUpdated (epoch ms, queue clock)
//   crFree     runs that were not attempts (deferred, rate-limited: backoff.ts); attempts
//              counted against crMax are `ats - crFree`
//   crFirstFail epoch ms of the first failure since the job was added or replayed (the start
//              of its retry span), absent until then
// and keys under `<prefix>:<queue>:cr:` — job ids never hold ':' (bullmq.ts encodes them), so
// no job key falls there: cr:seq, cr:key:<cancel key> (SET of job ids), cr:cancelled (ZSET,
// score = when), cr:parked (SET), cr:dead-inbox (SET: dead-lettered or parked, not yet recorded).

/** Shared Lua functions, prepended to each script. */
const COMMON = `
local rcall = redis.call
local MAX_EVENTS = 10000

local function event(base, ...)
  rcall("XADD", base .. "events", "MAXLEN", "~", MAX_EVENTS, "*", ...)
end

-- includes/getTargetQueueList.lua: a paused queue parks due jobs on 'paused'; a queue at its
-- global concurrency takes them later (no marker then).
local function target(base)
  local attrs = rcall("HMGET", base .. "meta", "paused", "concurrency")
  if attrs[1] then return base .. "paused", true end
  if attrs[2] and rcall("LLEN", base .. "active") >= tonumber(attrs[2]) then return base .. "wait", true end
  return base .. "wait", false
end

-- includes/getDelayedScore.lua
local function delayedScore(delayedKey, dueMs)
  local minScore = dueMs * 0x1000
  local maxScore = (dueMs + 1) * 0x1000 - 1
  local result = rcall("ZREVRANGEBYSCORE", delayedKey, maxScore, minScore, "WITHSCORES", "LIMIT", 0, 1)
  if #result > 0 then
    local current = tonumber(result[2])
    if current >= maxScore then return maxScore end
    return current + 1
  end
  return minScore
end

-- includes/addDelayMarkerIfNeeded.lua
local function delayMarker(base)
  local first = rcall("ZRANGE", base .. "delayed", 0, 0, "WITHSCORES")
  if #first > 0 then rcall("ZADD", base .. "marker", math.floor(tonumber(first[2]) / 0x1000), "1") end
end

-- A job made due (pending) or moved: on wait now, or in delayed until dueMs.
local function place(base, id, dueMs, nowMs)
  if dueMs <= nowMs then
    local list, quiet = target(base)
    rcall("LPUSH", list, id)
    rcall("HSET", base .. id, "delay", 0)
    if not quiet then rcall("ZADD", base .. "marker", 0, "0") end
    event(base, "event", "waiting", "jobId", id)
  else
    rcall("ZADD", base .. "delayed", delayedScore(base .. "delayed", dueMs), id)
    rcall("HSET", base .. id, "delay", dueMs - nowMs)
    delayMarker(base)
    event(base, "event", "delayed", "jobId", id, "delay", dueMs)
  end
end

-- The job's state as the Queue interface names it. The hash exists.
local function state(base, id)
  local own = rcall("HGET", base .. id, "crState")
  if own == "cancelled" or own == "parked" then return own end
  if rcall("ZSCORE", base .. "completed", id) then return "done" end
  if rcall("ZSCORE", base .. "failed", id) then return "dead" end
  if rcall("ZSCORE", base .. "delayed", id) then return "pending" end
  if rcall("EXISTS", base .. id .. ":lock") == 1 then return "active" end
  -- Active with a lapsed lock, until BullMQ's stalled check gives it back. The active list
  -- holds at most the workers' total concurrency.
  if rcall("LPOS", base .. "active", id) then return "active" end
  return "pending"
end

-- Takes a pending job off wait / delayed / paused / prioritized; 1 when it was there.
local function unplace(base, id)
  if rcall("ZREM", base .. "delayed", id) > 0 then return 1 end
  if rcall("LREM", base .. "wait", 1, id) > 0 then return 1 end
  if rcall("LREM", base .. "paused", 1, id) > 0 then return 1 end
  if rcall("ZREM", base .. "prioritized", id) > 0 then return 1 end
  return 0
end

local function ours(base, id)
  return rcall("HEXISTS", base .. id, "crSeq") == 1
end
`;

/**
 * After BullMQ's add command in the same MULTI: a job BullMQ just created has no crSeq yet,
 * so it gets CareRelay's fields and its cancel keys are indexed (1); a duplicate id already
 * has them and is left as it is (0). ARGV: base, id, runAtMs, maxAttempts, idempotent (0|1),
 * keys JSON, nowMs, then each cancel key.
 */
const AFTER_ADD = `${COMMON}
local base, id = ARGV[1], ARGV[2]
if rcall("EXISTS", base .. id) == 0 or ours(base, id) then return 0 end
local seq = rcall("INCR", base .. "cr:seq")
rcall("HSET", base .. id, "crSeq", seq, "crRunAt", ARGV[3], "crMax", ARGV[4], "crIdem", ARGV[5],
  "crKeys", ARGV[6], "crUpdated", ARGV[7])
for i = 8, #ARGV do rcall("SADD", base .. "cr:key:" .. ARGV[i], id) end
return 1
`;

/**
 * Moves delayed jobs due by the queue's clock to wait (BullMQ's own move uses the process
 * clock; with the same clock both agree). ARGV: base, nowMs. Returns { moved, next due ms or
 * -1, jobs waiting }.
 */
const PROMOTE = `${COMMON}
local base, now = ARGV[1], tonumber(ARGV[2])
local due = rcall("ZRANGEBYSCORE", base .. "delayed", 0, (now + 1) * 0x1000 - 1, "LIMIT", 0, 1000)
if #due > 0 then
  rcall("ZREM", base .. "delayed", unpack(due))
  local list, quiet = target(base)
  for _, id in ipairs(due) do
    rcall("LPUSH", list, id)
    rcall("HSET", base .. id, "delay", 0)
    event(base, "event", "waiting", "jobId", id, "prev", "delayed")
  end
  if not quiet then rcall("ZADD", base .. "marker", 0, "0") end
end
local first = rcall("ZRANGE", base .. "delayed", 0, 0, "WITHSCORES")
local nextDue = -1
if #first > 0 then nextDue = math.floor(tonumber(first[2]) / 0x1000) end
return { #due, nextDue, rcall("LLEN", base .. "wait") }
`;

/**
 * Cancels every pending job carrying the key, and the pending job whose id is the key.
 * ARGV: base, key, the key as a job id, reason ('' for none), nowMs. Returns how many.
 */
const CANCEL = `${COMMON}
local base, key, own, reason, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ids = rcall("SMEMBERS", base .. "cr:key:" .. key)
table.insert(ids, own)
local seen, count = {}, 0
for _, id in ipairs(ids) do
  if not seen[id] then
    seen[id] = true
    if ours(base, id) and state(base, id) == "pending" and unplace(base, id) == 1 then
      rcall("HSET", base .. id, "crState", "cancelled", "crUpdated", now)
      if reason ~= "" then rcall("HSET", base .. id, "crReason", reason) end
      rcall("ZADD", base .. "cr:cancelled", now, id)
      event(base, "event", "removed", "jobId", id, "prev", "cancelled")
      count = count + 1
    end
  end
end
return count
`;

/**
 * Moves a pending job to a new due time, with new data when given. ARGV: base, id, runAtMs,
 * nowMs, has data (0|1), data JSON. Returns 1, or 0 when the job is not pending.
 */
const RESCHEDULE = `${COMMON}
local base, id, runAt, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if not ours(base, id) or state(base, id) ~= "pending" then return 0 end
if unplace(base, id) == 0 then return 0 end
place(base, id, runAt, now)
rcall("HSET", base .. id, "crRunAt", runAt, "crUpdated", now)
if ARGV[5] == "1" then rcall("HSET", base .. id, "data", ARGV[6]) end
return 1
`;

/**
 * Right after BullMQ's take (moveToActive) of a job by this worker: what the handler needs.
 * An attempt started with no outcome written means the previous worker vanished: that is
 * recorded now as the job's last error (lease_expired), and starts its retry span. ARGV: base,
 * id, nowMs. Returns { runs started, max attempts, idempotent, previous error code or '', runs
 * that were not attempts, first failure ms or -1 }.
 */
const TAKEN = `${COMMON}
local base, id, now = ARGV[1], ARGV[2], ARGV[3]
local f = rcall("HMGET", base .. id, "ats", "crMax", "crIdem", "crErrRun", "crErrCode", "crFree", "crFirstFail")
local attempt = tonumber(f[1]) or 1
local errRun = tonumber(f[4]) or 0
local previous = f[5] or ""
local firstFail = tonumber(f[7]) or -1
if attempt > 1 and errRun < attempt - 1 then
  previous = "lease_expired"
  rcall("HSET", base .. id, "crErrRun", attempt - 1, "crErrClass", "lease_expired", "crErrCode", "lease_expired", "crUpdated", now)
  if firstFail < 0 then
    firstFail = tonumber(now)
    rcall("HSET", base .. id, "crFirstFail", now)
  end
end
return { attempt, tonumber(f[2]) or 1, tonumber(f[3]) or 0, previous, tonumber(f[6]) or 0, firstFail }
`;

/**
 * A run's outcome other than success, only by the worker holding the job's lock (BullMQ's
 * removeLock rule): 'retry' and 'deferred' put it back at runAtMs, 'parked' and 'dead' move it
 * to BullMQ's failed set (parked also to cr:parked; both to cr:dead-inbox until the store
 * recorded them), 'dead-on-take' is a job taken after its last attempt was lost with its
 * worker (the take is not counted). A class and code of '' keep the last error (a plain
 * deferral); `free` 1 counts a run that was not an attempt; `failed` 1 starts the retry span.
 * ARGV: base, id, lock token, mode, runAtMs, failure class, code, attempt, nowMs, free, failed.
 * Returns 0, -1 (no job), -2 (lock missing), -6 (another worker's lock), -3 (not active).
 */
const FAIL = `${COMMON}
local base, id, token, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local runAt, class, code, attempt, now = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local free, failed = ARGV[10], ARGV[11]
local jobKey = base .. id
if rcall("EXISTS", jobKey) == 0 then return -1 end
local lock = rcall("GET", jobKey .. ":lock")
if lock ~= token then
  if lock then return -6 end
  return -2
end
rcall("DEL", jobKey .. ":lock")
rcall("SREM", base .. "stalled", id)
if rcall("LREM", base .. "active", -1, id) == 0 then return -3 end
if mode == "dead-on-take" then
  rcall("HINCRBY", jobKey, "ats", -1)
else
  rcall("HINCRBY", jobKey, "atm", 1)
end
rcall("HSET", jobKey, "crErrRun", attempt, "crUpdated", now)
if code ~= "" then rcall("HSET", jobKey, "crErrClass", class, "crErrCode", code) end
if free == "1" then rcall("HINCRBY", jobKey, "crFree", 1) end
if failed == "1" and rcall("HEXISTS", jobKey, "crFirstFail") == 0 then rcall("HSET", jobKey, "crFirstFail", now) end
if mode == "retry" or mode == "deferred" then
  place(base, id, runAt, now)
  rcall("HSET", jobKey, "crRunAt", runAt)
  return 0
end
rcall("ZADD", base .. "failed", now, id)
rcall("HSET", jobKey, "finishedOn", now, "failedReason", code)
if mode == "parked" then
  rcall("HSET", jobKey, "crState", "parked")
  rcall("SADD", base .. "cr:parked", id)
end
rcall("SADD", base .. "cr:dead-inbox", id)
event(base, "event", "failed", "jobId", id, "failedReason", code, "prev", "active")
return 0
`;

/**
 * Replays a dead or parked job: pending now, with exactly one more counted attempt and a
 * fresh retry span. ARGV: base, id,
 * nowMs. Returns 1, or 0 when the job is neither.
 */
const RETRY_DEAD = `${COMMON}
local base, id, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
if not ours(base, id) then return 0 end
if rcall("ZREM", base .. "failed", id) == 0 then return 0 end
rcall("SREM", base .. "cr:parked", id)
rcall("SREM", base .. "cr:dead-inbox", id)
rcall("HDEL", base .. id, "crState", "finishedOn", "failedReason", "crFirstFail")
local started = tonumber(rcall("HGET", base .. id, "ats")) or 0
local free = tonumber(rcall("HGET", base .. id, "crFree")) or 0
rcall("HSET", base .. id, "crMax", started - free + 1, "crRunAt", now, "crUpdated", now)
place(base, id, now, now)
return 1
`;

/** Counts per state, O(1). ARGV: base. Returns { pending, active, done, cancelled, parked, dead }. */
const COUNTS = `${COMMON}
local base = ARGV[1]
local pending = rcall("LLEN", base .. "wait") + rcall("ZCARD", base .. "delayed") + rcall("LLEN", base .. "paused") + rcall("ZCARD", base .. "prioritized")
local parked = rcall("SCARD", base .. "cr:parked")
return { pending, rcall("LLEN", base .. "active"), rcall("ZCARD", base .. "completed"),
  rcall("ZCARD", base .. "cr:cancelled"), parked, rcall("ZCARD", base .. "failed") - parked }
`;

/**
 * What get() and list() show of each job id given (ARGV: base, ids…): per job a flat array
 * { id, state or '', data, timestamp, ats, crSeq, crRunAt, crMax, crIdem, crKeys, crErrRun,
 * crErrClass, crErrCode, crReason, crUpdated, crFree, crFirstFail } ('' for an absent field). A job that is not
 * CareRelay's (no crSeq) comes back with state ''.
 */
const READ = `${COMMON}
local base = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local row = { id, "" }
  if ours(base, id) then
    row[2] = state(base, id)
    local f = rcall("HMGET", base .. id, "data", "timestamp", "ats", "crSeq", "crRunAt", "crMax", "crIdem", "crKeys",
      "crErrRun", "crErrClass", "crErrCode", "crReason", "crUpdated", "crFree", "crFirstFail")
    for j = 1, 15 do row[j + 2] = f[j] or "" end
  end
  table.insert(out, row)
end
return out
`;

/**
 * The ids of jobs in the given states (ARGV: base, states…) — for list(), which sorts them.
 * The job's state is checked again when it is read.
 */
const IDS_IN = `${COMMON}
local base = ARGV[1]
local out = {}
local function add(ids) for _, id in ipairs(ids) do table.insert(out, id) end end
for i = 2, #ARGV do
  local s = ARGV[i]
  if s == "pending" then
    add(rcall("LRANGE", base .. "wait", 0, -1)); add(rcall("ZRANGE", base .. "delayed", 0, -1))
    add(rcall("LRANGE", base .. "paused", 0, -1)); add(rcall("ZRANGE", base .. "prioritized", 0, -1))
  elseif s == "active" then add(rcall("LRANGE", base .. "active", 0, -1))
  elseif s == "done" then add(rcall("ZRANGE", base .. "completed", 0, -1))
  elseif s == "cancelled" then add(rcall("ZRANGE", base .. "cr:cancelled", 0, -1))
  elseif s == "parked" then add(rcall("SMEMBERS", base .. "cr:parked"))
  elseif s == "dead" then add(rcall("ZRANGE", base .. "failed", 0, -1))
  elseif s == "key" then add(rcall("SMEMBERS", base .. "cr:key:" .. ARGV[i + 1])); break
  end
end
return out
`;

/**
 * Deletes cancelled jobs cancelled before ARGV[2] (epoch ms), at most 1,000 per call, with
 * their locks and logs; their ids stay in the cancel-key sets (a look-up skips them).
 * ARGV: base, beforeMs. Returns how many.
 */
const PRUNE_CANCELLED = `${COMMON}
local base = ARGV[1]
local ids = rcall("ZRANGEBYSCORE", base .. "cr:cancelled", 0, ARGV[2], "LIMIT", 0, 1000)
for _, id in ipairs(ids) do
  rcall("DEL", base .. id, base .. id .. ":logs")
end
if #ids > 0 then rcall("ZREM", base .. "cr:cancelled", unpack(ids)) end
return #ids
`;

/** Script name → Lua source (numberOfKeys 0: keys are derived from the queue's base key). */
export const BULLMQ_SCRIPTS = {
  crAfterAdd: AFTER_ADD,
  crPromote: PROMOTE,
  crCancel: CANCEL,
  crReschedule: RESCHEDULE,
  crTaken: TAKEN,
  crFail: FAIL,
  crRetryDead: RETRY_DEAD,
  crCounts: COUNTS,
  crRead: READ,
  crIdsIn: IDS_IN,
  crPruneCancelled: PRUNE_CANCELLED,
} as const;
export type BullMqScriptName = keyof typeof BULLMQ_SCRIPTS;
