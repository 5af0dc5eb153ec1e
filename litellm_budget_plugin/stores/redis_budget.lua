-- One budget operation, run atomically by Redis for litellm_budget_plugin.stores.redis.
--
-- The functions mirror those of the same name in litellm_budget_plugin/budget.py and
-- reservations.py; Python has validated every argument already, so nothing here checks
-- input. The key layout is
-- described in the docstring of stores/redis.py. Keys are built here from the project's
-- prefix (settle and release find the user from the call id), so this is for a single
-- Redis server, not Redis Cluster.
--
-- ARGV: prefix, operation, now, applied-id TTL, applied-id limit, then the operation's own.
-- Numbers travel as text and are written back with 17 significant digits, so a double
-- survives the trip exactly and the arithmetic is the same double arithmetic as Python's.
-- The reply is one JSON string: {"ok", ...} or an error status for Python to raise.

local prefix, op, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local APPLIED_TTL, APPLIED_LIMIT = tonumber(ARGV[4]), tonumber(ARGV[5])

local function fmt(x) return string.format('%.17g', x) end
local function opt(s) if s ~= '' then return s end return nil end  -- '' stands for None
local function optnum(s) if s ~= '' then return tonumber(s) end return nil end
local function user_key(user) return prefix .. 'user:' .. user end
local function call_key(call_id) return prefix .. 'call:' .. call_id end
-- overruns.OVERRUN_TOLERANCE (a test checks that they agree)
local OVERRUN_TOLERANCE = 1e-9
-- limits.MAX_AMOUNT, the most a record holds (a test checks that they agree)
local MAX_AMOUNT = 1e15

-- The server-side lease of a hold: at least 1 ms, at most ~30,000 years (PX's range).
local function lease_ms(expires_at)
  return math.min(1e15, math.max(1, math.ceil((expires_at - now) * 1000)))
end

local function load(user)
  local flat = redis.call('HGETALL', user_key(user))
  if #flat == 0 then return nil end
  local r = {user = user, flat = flat, models = {}, held = {}, gone = {}}
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    local kind, name = string.match(field, '^([mr]):(.*)$')
    if kind == 'm' then
      r.models[name] = tonumber(value)
    elseif kind == 'r' then
      local amount, expires_at = string.match(value, '^(%S+) (%S+)$')
      r.held[name] = {amount = tonumber(amount), expires_at = tonumber(expires_at)}
    elseif field == 'extra' or field == 'applied' then
      r[field .. '_json'] = value
    else
      r[field] = tonumber(value)
    end
  end
  return r
end

local function new_record(user, total_budget, duration, start)
  return {user = user, new = true, models = {}, held = {}, gone = {}, total_budget = optnum(total_budget),
          duration = optnum(duration), current_cost = 0, created_at = start, last_updated_at = start}
end

local function load_or_default(user, default_total, default_duration, has_default)
  return load(user) or (has_default == '1' and new_record(user, default_total, default_duration, now)) or nil
end

-- Call ids already charged: {{id, time}, ...}, oldest first, decoded when first needed.
local function applied(r)
  if not r.applied then r.applied = r.applied_json and cjson.decode(r.applied_json) or {} end
  return r.applied
end

local function was_applied(r, call_id)
  for _, entry in ipairs(applied(r)) do
    if entry[1] == call_id then return true end
  end
  return false
end

-- budget.current_window: roll at start + k x duration; drop expired holds and old call ids.
local function current_window(r)
  local start = r.last_updated_at
  if r.duration then
    local period = r.duration * 86400
    if now - start >= period then
      r.last_updated_at = start + math.floor((now - start) / period) * period
      r.current_cost, r.models = 0, {}
    end
  end
  for call_id, held in pairs(r.held) do
    if not (held.expires_at > now) then
      r.held[call_id] = nil
      table.insert(r.gone, call_id)
    end
  end
  local ids = applied(r)
  -- pruned once twice over either bound, as budget.recent_applied does (APPLIED_ID_SLACK)
  if #ids > 2 * APPLIED_LIMIT or (#ids > 0 and now - tonumber(ids[1][2]) >= 2 * APPLIED_TTL) then
    local recent = {}
    for _, entry in ipairs(ids) do
      if now - tonumber(entry[2]) < APPLIED_TTL then table.insert(recent, entry) end
    end
    r.applied = {unpack(recent, math.max(1, #recent - APPLIED_LIMIT + 1))}
    r.applied_changed = true
  end
end

-- Rewrite the record's hash; returns its fields as HGETALL would.
local function save(r)
  local fields = {'current_cost', fmt(r.current_cost), 'created_at', fmt(r.created_at),
                  'last_updated_at', fmt(r.last_updated_at)}
  local function add(field, value) fields[#fields + 1] = field; fields[#fields + 1] = value end
  if r.total_budget then add('total_budget', fmt(r.total_budget)) end
  if r.duration then add('duration', fmt(r.duration)) end
  if r.overruns then add('overruns', fmt(r.overruns)) end
  if r.overrun_cost then add('overrun_cost', fmt(r.overrun_cost)) end
  if r.extra_json then add('extra', r.extra_json) end
  for model, cost in pairs(r.models) do add('m:' .. model, fmt(cost)) end
  for call_id, held in pairs(r.held) do add('r:' .. call_id, fmt(held.amount) .. ' ' .. fmt(held.expires_at)) end
  if r.applied_changed then
    if #r.applied > 0 then add('applied', cjson.encode(r.applied)) end
  elseif r.applied_json then
    add('applied', r.applied_json)
  end
  local key = user_key(r.user)
  redis.call('DEL', key)
  for i = 1, #fields, 1000 do  -- in slices: unpack is limited by Lua's stack
    redis.call('HSET', key, unpack(fields, i, math.min(i + 999, #fields)))
  end
  if r.new then redis.call('SADD', prefix .. 'users', r.user) end
  for _, call_id in ipairs(r.gone) do redis.call('DEL', call_key(call_id)) end
  return fields
end

-- overruns.overrun: how much a call's cost exceeds its hold (0 within float noise, or no hold).
local function overrun(cost, held)
  if held == nil or cost <= held * (1 + OVERRUN_TOLERANCE) then return 0 end
  return cost - held
end

-- budget.charge: 'applied' if the call id was charged already, 'too_large' if a sum would
-- pass MAX_AMOUNT (nothing changed then), else 'ok'. A cost above held counts as an overrun.
local function charge(r, cost, model, call_id, held)
  if call_id and was_applied(r, call_id) then return 'applied' end
  current_window(r)
  local total = r.current_cost + cost
  local model_total = (r.models[model] or 0) + cost
  local excess = overrun(cost, held)
  local overrun_total = (r.overrun_cost or 0) + excess
  if math.max(total, model_total, overrun_total) > MAX_AMOUNT then return 'too_large' end
  r.current_cost = total
  r.models[model] = model_total
  if excess > 0 then
    r.overruns = (r.overruns or 0) + 1
    r.overrun_cost = overrun_total
  end
  if call_id then
    r.held[call_id] = nil
    table.insert(r.gone, call_id)
    table.insert(applied(r), {call_id, fmt(now)})
    r.applied_changed = true
  end
  return 'ok'
end

local function admits(spend, held, estimate, budget, mode)
  if budget == nil then return true end
  if mode == 'strict' then return spend + held + estimate <= budget * (1 + 1e-12) end
  return spend + held < budget
end

-- reservations.hold_amount: amount if it fits; with at_least, what is left of the budget if at least that.
local function hold_amount(spend, held, amount, budget, mode, at_least)
  if at_least == nil or budget == nil or (mode == 'strict' and admits(spend, held, amount, budget, mode)) then
    if admits(spend, held, amount, budget, mode) then return amount end
    return nil
  end
  if not admits(spend, held, at_least, budget, mode) then return nil end
  return math.min(amount, math.max(at_least, budget - spend - held))
end

local ops = {}

function ops.get(user) return {'ok', redis.call('HGETALL', user_key(user))} end

function ops.all()
  local out = {'ok'}
  for _, user in ipairs(redis.call('SMEMBERS', prefix .. 'users')) do
    table.insert(out, {user, redis.call('HGETALL', user_key(user))})
  end
  return out
end

function ops.set_budget(user, total_budget, duration, created_at)
  created_at = optnum(created_at)
  local r = load(user)
  if r then
    current_window(r)
    r.total_budget, r.duration = optnum(total_budget), optnum(duration)
    if created_at then r.created_at, r.last_updated_at = created_at, created_at end
  else
    r = new_record(user, total_budget, duration, created_at or now)
  end
  return {'ok', save(r)}
end

-- ARGV[7] holds the number of hash field and value strings that follow it.
function ops.put(user)
  local old = load(user)
  if old then
    for call_id in pairs(old.held) do redis.call('DEL', call_key(call_id)) end
  end
  redis.call('DEL', user_key(user))
  local last = 7 + tonumber(ARGV[7])
  for i = 8, last, 1000 do
    redis.call('HSET', user_key(user), unpack(ARGV, i, math.min(i + 999, last)))
  end
  redis.call('SADD', prefix .. 'users', user)
  for call_id, held in pairs(load(user).held) do
    redis.call('SET', call_key(call_id), user, 'PX', lease_ms(held.expires_at))
  end
  return {'ok'}
end

-- budget.with_fields: the fields, checked in Python, as a JSON object; null removes one.
function ops.set_fields(user, fields)
  local r = load(user)
  if not r then return {'unknown'} end
  current_window(r)
  for name, value in pairs(cjson.decode(fields)) do
    if value == cjson.null then value = nil end
    if name == 'model_cost' then r.models = value else r[name] = value end
  end
  return {'ok', save(r)}
end

function ops.delete(user)
  local r = load(user)
  if not r then return {'ok', 0} end
  for call_id in pairs(r.held) do redis.call('DEL', call_key(call_id)) end
  redis.call('DEL', user_key(user))
  redis.call('SREM', prefix .. 'users', user)
  return {'ok', 1}
end

function ops.reset(user)
  local r = load(user)
  if not r then return {'unknown'} end
  current_window(r)
  r.current_cost, r.models = 0, {}
  return {'ok', save(r)}
end

function ops.roll(user)
  local r = load(user)
  if not r then return {'unknown'} end
  current_window(r)
  return {'ok', save(r)}
end

function ops.charge(user, cost, model, call_id, default_total, default_duration, has_default, held)
  local r = load_or_default(user, default_total, default_duration, has_default)
  if not r then return {'unknown'} end
  local status = charge(r, tonumber(cost), model, opt(call_id), optnum(held))
  if status == 'too_large' then return {'too_large'} end
  if status == 'applied' then return {'ok', r.flat} end
  return {'ok', save(r)}
end

function ops.reserve(user, call_id, amount, ttl, mode, default_total, default_duration, has_default, at_least)
  local r = load_or_default(user, default_total, default_duration, has_default)
  if not r then return {'unknown'} end
  if was_applied(r, call_id) then return {'ok', r.flat} end
  current_window(r)
  local held = 0
  for other, hold in pairs(r.held) do
    if other ~= call_id then held = held + hold.amount end
  end
  local hold = hold_amount(r.current_cost, held, tonumber(amount), r.total_budget, mode, optnum(at_least or ''))
  if not hold then
    return {'over', fmt(r.current_cost), fmt(r.total_budget), fmt(held)}
  end
  local expires_at = now + tonumber(ttl)
  r.held[call_id] = {amount = hold, expires_at = expires_at}
  local fields = save(r)
  redis.call('SET', call_key(call_id), user, 'PX', lease_ms(expires_at))
  return {'ok', fields}
end

local function owner(call_id, user)
  return opt(user) or redis.call('GET', call_key(call_id))
end

function ops.settle(call_id, cost, model, user)
  user = owner(call_id, user)
  local r = user and load(user)
  if not r then return {'ok', 0} end
  local hold = r.held[call_id]  -- read before charge rolls the window and drops expired holds
  local status = charge(r, tonumber(cost), model, call_id, hold and hold.amount)
  if status == 'too_large' then return {'too_large'} end
  if status == 'applied' then return {'ok', 0} end
  save(r)
  return {'ok', 1}
end

function ops.release(call_id, user)
  user = owner(call_id, user)
  local r = user and load(user)
  if not r or not r.held[call_id] then return {'ok', 0} end
  current_window(r)
  local found = r.held[call_id] ~= nil
  r.held[call_id] = nil
  table.insert(r.gone, call_id)
  save(r)
  return {'ok', found and 1 or 0}
end

-- At most 9 arguments (reserve's): put's field list stays in ARGV.
return cjson.encode(ops[op](unpack(ARGV, 6, math.min(#ARGV, 14))))
