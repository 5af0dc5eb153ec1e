-- One budget operation, run atomically by Redis for litellm_budget_plugin.stores.redis: the
-- arithmetic, after redis_records.lua (arguments, reading and writing records), which comes
-- first in the same script.
--
-- The functions mirror those of the same name in litellm_budget_plugin/budget.py,
-- reservations.py, subjects.py and windows.py; Python has validated every argument already,
-- so nothing here checks input. The key layout is described in the docstring of
-- stores/redis.py. Keys are built here from the project's prefix (a call is held in the
-- budgets the user's record names, settle and release find the user from the call id), so
-- this is for a single Redis server, not Redis Cluster.

-- overruns.OVERRUN_TOLERANCE (a test checks that they agree)
local OVERRUN_TOLERANCE = 1e-9

-- windows.rolled_start. A calendar window is in the period holding now unless it started
-- before that period (``now < period_end(start)`` in windows.py says the same).
local function rolled_start(start, days, timezone)
  if not days then return start end
  if timezone then
    local key = spec(days, timezone)
    local current = periods[key]
    if not current then
      if not needed[key] then
        needed[key] = true
        missing[#missing + 1] = {fmt(days), timezone}
      end
      return start
    end
    if start < current then return current end
    return start
  end
  local period = days * 86400
  if now - start < period then return start end
  return start + math.floor((now - start) / period) * period
end

-- budget.current_window: roll every window; drop expired holds and old call ids.
local function current_window(r)
  local start = rolled_start(r.last_updated_at, r.duration, r.timezone)
  if start ~= r.last_updated_at then
    r.last_updated_at = start
    r.current_cost, r.models = 0, {}
  end
  for _, w in ipairs(r.windows or {}) do
    start = rolled_start(w.start, w.duration, w.timezone)
    if start ~= w.start then w.start, w.spend = start, 0 end
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
    r.applied_list = {unpack(recent, math.max(1, #recent - APPLIED_LIMIT + 1))}
    r.applied_changed = true
  end
end

-- overruns.overrun: how much a call's cost exceeds its hold (0 within float noise, or no hold).
local function overrun(cost, held)
  if held == nil or cost <= held * (1 + OVERRUN_TOLERANCE) then return 0 end
  return cost - held
end

-- windows.model_family: without a provider prefix or a release date (-YYYY-MM-DD, -YYYYMMDD)
local function model_family(name)
  local family = string.match(name, '[^/]*$')
  family = string.gsub(family, '%-%d%d%d%d%-%d%d%-%d%d$', '')
  return (string.gsub(family, '%-%d%d%d%d%d%d%d%d$', ''))
end

-- windows.same_model: the same family; an unknown model (nil) counts in every cap.
local function same_model(limited, model)
  return model == nil or limited == model or model_family(limited) == model_family(model)
end

-- windows.applies_to
local function applies_to(w, model) return w.model == nil or same_model(w.model, model) end

-- budget.charge_many: 'applied' if the call id was charged already, 'too_large' if a sum would
-- pass MAX_AMOUNT (nothing changed then), else 'ok'. A cost above held counts as an overrun.
-- Only with ``remember`` (the user's record) is the call id checked and kept.
local function charge(r, cost, model, call_id, held, remember)
  if remember and call_id and was_applied(r, call_id) then return 'applied' end
  current_window(r)
  local total = r.current_cost + cost
  local model_total = (r.models[model] or 0) + cost
  local excess = overrun(cost, held)
  local overrun_total = (r.overrun_cost or 0) + excess
  local largest = math.max(total, model_total, overrun_total)
  for _, w in ipairs(r.windows or {}) do
    if applies_to(w, model) then largest = math.max(largest, w.spend + cost) end
  end
  if largest > MAX_AMOUNT then return 'too_large' end
  r.current_cost = total
  r.models[model] = model_total
  for _, w in ipairs(r.windows or {}) do
    if applies_to(w, model) then w.spend = w.spend + cost end
  end
  if excess > 0 then
    r.overruns = (r.overruns or 0) + 1
    r.overrun_cost = overrun_total
  end
  if call_id then
    r.held[call_id] = nil
    table.insert(r.gone, call_id)
    if remember then
      table.insert(applied(r), {call_id, fmt(now)})
      r.applied_changed = true
    end
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

-- reservations.reserved: held by other calls (with ``only``, those a window of that model counts).
local function reserved(r, exclude, only)
  local sum = 0
  for call_id, held in pairs(r.held) do
    if held.expires_at > now and call_id ~= exclude
      and (only == nil or held.model == nil or same_model(only, held.model)) then
      sum = sum + held.amount
    end
  end
  return sum
end

-- reservations.record_hold: what the call may hold in r, fitting every window that counts its
-- model; or nil and the refusal (the budget, its spend and holds, the window as Python names it).
local function record_hold(r, call_id, amount, mode, at_least, model)
  local hold = amount
  local checks = {{budget = r.total_budget, spend = r.current_cost}}
  for _, w in ipairs(r.windows or {}) do
    if applies_to(w, model) then checks[#checks + 1] = {budget = w.budget, spend = w.spend, window = w} end
  end
  for _, check in ipairs(checks) do
    local w = check.window
    local held = reserved(r, call_id, w and w.model)
    local fits = hold_amount(check.spend, held, amount, check.budget, mode, at_least)
    if not fits then
      local window = ''
      if w then
        window = {fmt(w.budget), w.duration and fmt(w.duration) or '', w.timezone or '', w.model or ''}
      end
      return nil, {'over', r.key, fmt(check.spend), fmt(check.budget), fmt(held), window}
    end
    hold = math.min(hold, fits)
  end
  return hold
end

-- subjects.charged_subjects: the user, the team its record names, then ``more``, without repeats.
local function charged_subjects(user, r, more)
  local keys, seen = {user}, {[user] = true}
  local function add(key)
    if not seen[key] then
      seen[key] = true
      keys[#keys + 1] = key
    end
  end
  if r.team and kind_of(user) == 'user' then
    if string.sub(r.team, 1, 5) == 'team:' then add(r.team) else add('team:' .. r.team) end
  end
  for _, key in ipairs(more) do add(key) end
  return keys
end

-- reservations.charge_all: the budgets that held the call (the user's hold names them), else
-- the user's team and ``more``; a team without a record gets one without a limit, a tag
-- without one is left out. Returns the records changed (none for a call id the user's record
-- has charged already), or nil if a sum would pass MAX_AMOUNT.
local function charge_all(user, u, cost, model, call_id, held, more)
  if call_id and was_applied(u, call_id) then return {} end
  local hold = call_id and u.held[call_id]
  local keys
  if hold then
    keys = {user}
    for _, key in ipairs(hold.also or {}) do keys[#keys + 1] = key end
  else
    keys = charged_subjects(user, u, more)
  end
  local changed = {}
  for _, key in ipairs(keys) do
    local r = u
    if key ~= user then
      r = load(key)
      if not r and kind_of(key) ~= 'tag' then r = new_record(key, nil, nil) end
    end
    if r then
      local own = call_id and r.held[call_id]
      if charge(r, cost, model, call_id, own and own.amount or held, r == u) == 'too_large' then return nil end
      changed[#changed + 1] = r
    end
  end
  return changed
end

-- budget.release: drop the call's hold from r (nil: no record), saved if it still held it
-- once expired holds are dropped.
local function release_hold(r, call_id)
  if r and r.held[call_id] then
    current_window(r)
    if r.held[call_id] then
      r.held[call_id] = nil
      table.insert(r.gone, call_id)
      save(r)
    end
  end
end

local ops = {}

function ops.get(user) return {'ok', redis.call('HGETALL', record_key(user))} end

function ops.all()
  local out = {'ok'}
  for _, user in ipairs(redis.call('SMEMBERS', prefix .. 'users')) do
    table.insert(out, {user, redis.call('HGETALL', record_key(user))})
  end
  return out
end

-- Op argument 2 holds the number of hash field and value strings that follow it: the record
-- as Python wrote it (a put, or set_budget and set_fields, run in a MULTI that WATCHes the key).
function ops.put(user)
  for _, call_id in ipairs(held_ids(user)) do drop_call(call_id, user) end
  redis.call('DEL', record_key(user))
  local fields = list_at(2)
  for i = 1, #fields, 1000 do
    redis.call('HSET', record_key(user), unpack(fields, i, math.min(i + 999, #fields)))
  end
  redis.call('SADD', prefix .. 'users', user)
  loaded[user] = nil
  index_calls(user, held_ids(user))
  return {'ok'}
end

function ops.delete(user)
  if redis.call('EXISTS', record_key(user)) == 0 then return {'ok', 0} end
  for _, call_id in ipairs(held_ids(user)) do drop_call(call_id, user) end
  redis.call('DEL', record_key(user))
  redis.call('SREM', prefix .. 'users', user)
  return {'ok', 1}
end

-- budget.reset_spend
function ops.reset(user)
  local r = load(user)
  if not r then return {'unknown'} end
  current_window(r)
  r.current_cost, r.models = 0, {}
  for _, w in ipairs(r.windows or {}) do w.spend = 0 end
  return {'ok', save(r)}
end

function ops.roll(user)
  local r = load(user)
  if not r then return {'unknown'} end
  current_window(r)
  return {'ok', save(r)}
end

-- Op argument 9 counts the budgets given besides the user's (subjects=), which follow it;
-- the ledger's arguments follow them (see ledger_at).
function ops.charge(user, cost, model, call_id, default_total, default_duration, has_default, held)
  local more = list_at(9)
  local u = load_or_default(user, default_total, default_duration, has_default)
  if not u then return {'unknown'} end
  local changed = charge_all(user, u, tonumber(cost), model, opt(call_id), optnum(held), more)
  if not changed then return {'too_large'} end
  for _, r in ipairs(changed) do save(r) end
  record_charge(ledger_at(10 + #more), changed)
  return {'ok', u.fields or u.flat}
end

-- reservations.reserve_all. Op argument 11 counts the budgets given besides the user's.
function ops.reserve(user, call_id, amount, ttl, mode, default_total, default_duration, has_default, at_least, model)
  local u = load_or_default(user, default_total, default_duration, has_default)
  if not u then return {'unknown'} end
  if was_applied(u, call_id) then return {'ok', u.flat} end
  amount, at_least, model = tonumber(amount), optnum(at_least), opt(model)
  local earlier = u.held[call_id]  -- reserved again: the budgets it leaves hold it no more (below)
  local keys = charged_subjects(user, u, list_at(11))
  local present = {}
  for _, key in ipairs(keys) do
    local r = key == user and u or load(key)
    if r then
      current_window(r)
      present[#present + 1] = r
    end
  end
  local hold = amount
  for _, r in ipairs(present) do
    local fits, refusal = record_hold(r, call_id, amount, r.key == GLOBAL and 'soft' or mode, at_least, model)
    if not fits then return refusal end
    hold = math.min(hold, fits)
  end
  if earlier and earlier.also then
    local kept = {}
    for _, r in ipairs(present) do kept[r.key] = true end
    for _, key in ipairs(earlier.also) do
      if not kept[key] then release_hold(load(key), call_id) end
    end
  end
  local others = {unpack(keys, 2)}
  local expires_at = now + tonumber(ttl)
  for _, r in ipairs(present) do
    local entry, more = {amount = hold, expires_at = expires_at}, {}
    if model then
      for _, w in ipairs(r.windows or {}) do
        if w.model then more.model = model end
      end
    end
    if r == u and #others > 0 then more.also = others end
    if next(more) then entry.tail = cjson.encode(more) end
    r.held[call_id] = entry
    save(r)
  end
  later(function() redis.call('SET', call_key(call_id), user) end)
  return {'ok', u.fields}
end

local function owner(call_id, user)
  return opt(user) or redis.call('GET', call_key(call_id))
end

-- The ledger's arguments are op argument 5 on (see ledger_at).
function ops.settle(call_id, cost, model, user)
  user = owner(call_id, user)
  local u = user and load(user)
  if not u then return {'ok', 0} end
  local hold = u.held[call_id]  -- read before charge rolls the window and drops expired holds
  local changed = charge_all(user, u, tonumber(cost), model, call_id, hold and hold.amount, {})
  if not changed then return {'too_large'} end
  for _, r in ipairs(changed) do save(r) end
  record_charge(ledger_at(5), changed)
  return {'ok', u.fields and 1 or 0}
end

-- reservations.release_all
function ops.release(call_id, user)
  user = owner(call_id, user)
  local u = user and load(user)
  local hold = u and u.held[call_id]
  if not hold then return {'ok', 0} end
  for _, key in ipairs({user, unpack(hold.also or {})}) do release_hold(load(key), call_id) end
  return {'ok', u.fields and 1 or 0}
end

-- At most 11 fixed arguments (reserve's); lists stay in ARGV (see list_at).
local done, reply = pcall(ops[op], unpack(ARGV, FIRST, math.min(#ARGV, FIRST + 10)))
if not done then
  if type(reply) == 'table' and reply.corrupt then return cjson.encode({'corrupt', reply.key, reply.why}) end
  error(reply, 0)  -- Redis's own (WRONGTYPE...), raised again: nothing was written
end
if #missing > 0 then return cjson.encode({'bounds', missing}) end
for _, write in ipairs(writes) do write() end
if ledger_error then reply[#reply + 1] = {'ledger', ledger_error} end  -- the charge is written
return cjson.encode(reply)
