/**
 * The rules of policy.ts as Redis Lua, so that one admission, across every
 * scope (agent, microDAO, model) and every dimension, is one atomic script:
 * Redis runs a script to the end before any other command. Checks come
 * first, writes after, so a refused request changes no count.
 *
 * Layout per scope: a hash `<prefix><scope key>` with the GCRA times
 * (`rpm_tat`, `tpm_tat`), the budget windows (`day`, `day_used`, `month`,
 * `month_used`, micro-dollars) and the limits the scope is counted against
 * (`limits`: JSON of the limits and the config fingerprint, as the
 * worker encoded it; `limits_at`, `limits_host`: see policy.ts
 * `RecordedLimits`), and a sorted set `<prefix><scope key>:leases` of request
 * ids scored by lease expiry. Keys expire once nothing in them matters any
 * more (the later of the GCRA times, the budget windows and the leases).
 *
 * Numbers are written with %.17g: Lua's default conversion keeps 14 digits,
 * which would round millisecond timestamps.
 *
 * KEYS: per scope i, KEYS[2i-1] the hash and KEYS[2i] the lease set.
 * ARGV[1]: now (ms since the epoch, the worker's clock). ARGV[2]: JSON.
 */

const COMMON = `
local now = tonumber(ARGV[1])
local c = cjson.decode(ARGV[2])
local WINDOW = 60000
local EPS = 1e-6
local function fmt(x) return string.format('%.17g', x) end
local function extend(key, at)
  local ttl = redis.call('PTTL', key)
  if ttl < 0 or now + ttl < at then redis.call('PEXPIREAT', key, math.ceil(at)) end
end
`;

/**
 * ARGV[2]: {scopes: [{rpm?, tpm?, concurrent?, daily?, monthly?, stamp?}], tokens, micro, id,
 * lease_until, day, day_ends_at, month, month_ends_at, hint, host, near_percent}.
 * Returns {1, then per budget left at or above near_percent: scope index (1-based), dimension}
 * when admitted, else {0, then per refusal: scope index (1-based), dimension, retry after ms,
 * fits (1/0), used}. An admission writes a scope's `stamp` where the hash holds another one (a
 * new hash, a changed config); so does a refusal, which counts nothing.
 */
export const ADMIT_SCRIPT = `${COMMON}
local refusals = {}
local near = {}
local plans = {}
local function nearly(i, dimension, used, limit)
  if limit > 0 and used * 100 >= limit * c.near_percent then
    table.insert(near, i); table.insert(near, dimension)
  end
end
for i, l in ipairs(c.scopes) do
  local hash, leases = KEYS[2 * i - 1], KEYS[2 * i]
  local s = redis.call('HMGET', hash, 'rpm_tat', 'tpm_tat', 'day', 'day_used', 'month', 'month_used', 'limits')
  local writes, lease, expire_at = {}, false, now
  local function refuse(dimension, retry, fits, used)
    table.insert(refusals, {i, dimension, math.ceil(retry), fits, math.ceil(used)})
  end
  if l.rpm then
    local tat = math.max(tonumber(s[1]) or now, now) + WINDOW / l.rpm
    if tat - now > WINDOW + EPS then refuse('rpm', tat - now - WINDOW, 1, l.rpm)
    else table.insert(writes, 'rpm_tat'); table.insert(writes, fmt(tat)); expire_at = math.max(expire_at, tat) end
  end
  if l.tpm then
    local base = math.max(tonumber(s[2]) or now, now)
    local tat = base + c.tokens * WINDOW / l.tpm
    local used = math.max(0, math.ceil((base - now) * l.tpm / WINDOW - EPS))
    if c.tokens > l.tpm then refuse('tpm', 0, 0, used)
    elseif tat - now > WINDOW + EPS then refuse('tpm', tat - now - WINDOW, 1, used)
    else table.insert(writes, 'tpm_tat'); table.insert(writes, fmt(tat)); expire_at = math.max(expire_at, tat) end
  end
  if l.concurrent then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    local count = redis.call('ZCARD', leases)
    if count >= l.concurrent then
      local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
      refuse('concurrent', math.min(c.hint, tonumber(first[2]) - now), 1, count)
    else lease = true end
  end
  if l.daily then
    local used = 0
    if s[3] == c.day then used = tonumber(s[4]) or 0 end
    if used + c.micro > l.daily then
      local fits = 0
      if c.micro <= l.daily then fits = 1 end
      refuse('daily_usd', c.day_ends_at - now, fits, used)
    else
      table.insert(writes, 'day'); table.insert(writes, c.day)
      table.insert(writes, 'day_used'); table.insert(writes, fmt(used + c.micro))
      expire_at = math.max(expire_at, c.day_ends_at)
      nearly(i, 'daily_usd', used + c.micro, l.daily)
    end
  end
  if l.monthly then
    local used = 0
    if s[5] == c.month then used = tonumber(s[6]) or 0 end
    if used + c.micro > l.monthly then
      local fits = 0
      if c.micro <= l.monthly then fits = 1 end
      refuse('monthly_usd', c.month_ends_at - now, fits, used)
    else
      table.insert(writes, 'month'); table.insert(writes, c.month)
      table.insert(writes, 'month_used'); table.insert(writes, fmt(used + c.micro))
      expire_at = math.max(expire_at, c.month_ends_at)
      nearly(i, 'monthly_usd', used + c.micro, l.monthly)
    end
  end
  plans[i] = {hash, leases, writes, lease, expire_at, s[7], l.stamp}
end
if #refusals > 0 then
  for _, p in ipairs(plans) do
    if p[7] and p[6] ~= p[7] then
      redis.call('HSET', p[1], 'limits', p[7], 'limits_at', fmt(now), 'limits_host', c.host)
      extend(p[1], now + WINDOW)
    end
  end
  local reply = {0}
  for _, r in ipairs(refusals) do for _, v in ipairs(r) do table.insert(reply, v) end end
  return reply
end
for _, p in ipairs(plans) do
  local writes, expire_at = p[3], p[5]
  if p[7] then
    -- The limits only when the hash holds others (limits_at: in force since); kept as long as the leases.
    if p[6] ~= p[7] then
      table.insert(writes, 'limits'); table.insert(writes, p[7])
      table.insert(writes, 'limits_at'); table.insert(writes, fmt(now))
      table.insert(writes, 'limits_host'); table.insert(writes, c.host)
    end
    if p[4] then expire_at = math.max(expire_at, c.lease_until) end
  end
  if #writes > 0 then
    redis.call('HSET', p[1], unpack(writes))
    extend(p[1], expire_at + WINDOW)
  elseif p[4] and p[7] then
    extend(p[1], expire_at + WINDOW)
  end
  if p[4] then
    redis.call('ZADD', p[2], c.lease_until, c.id)
    extend(p[2], c.lease_until)
  end
end
local reply = {1}
for _, v in ipairs(near) do table.insert(reply, v) end
return reply
`;

/**
 * ARGV[2]: {scopes: [...limits], requests, tokens, micro, day, month, release?}.
 * Settle, cancel or roll back: shift the GCRA times, correct the budget of
 * the window the reservation was made in, free the lease. Never refuses.
 */
export const ADJUST_SCRIPT = `${COMMON}
for i, l in ipairs(c.scopes) do
  local hash, leases = KEYS[2 * i - 1], KEYS[2 * i]
  local s = redis.call('HMGET', hash, 'rpm_tat', 'tpm_tat', 'day', 'day_used', 'month', 'month_used')
  local writes, expire_at = {}, now
  local function shift(field, tat, units, limit)
    if units == 0 then return end
    if units > 0 then tat = math.max(tat or now, now) + units * WINDOW / limit
    elseif tat then tat = tat + units * WINDOW / limit
    else return end
    table.insert(writes, field); table.insert(writes, fmt(tat)); expire_at = math.max(expire_at, tat)
  end
  if l.rpm then shift('rpm_tat', tonumber(s[1]), c.requests, l.rpm) end
  if l.tpm then shift('tpm_tat', tonumber(s[2]), c.tokens, l.tpm) end
  if c.release then redis.call('ZREM', leases, c.release) end
  if l.daily and s[3] == c.day then
    table.insert(writes, 'day_used'); table.insert(writes, fmt(math.max(0, (tonumber(s[4]) or 0) + c.micro)))
  end
  if l.monthly and s[5] == c.month then
    table.insert(writes, 'month_used'); table.insert(writes, fmt(math.max(0, (tonumber(s[6]) or 0) + c.micro)))
  end
  if #writes > 0 then
    redis.call('HSET', hash, unpack(writes))
    extend(hash, expire_at + WINDOW)
  end
end
return 1
`;
