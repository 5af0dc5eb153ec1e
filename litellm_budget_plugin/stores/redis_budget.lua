-- One budget operation, run atomically by Redis for litellm_budget_plugin.stores.redis.
--
-- The functions mirror those of the same name in litellm_budget_plugin/budget.py,
-- reservations.py, subjects.py and windows.py; Python has validated every argument already,
-- so nothing here checks input. The key layout is described in the docstring of
-- stores/redis.py. Keys are built here from the project's prefix (a call is held in the
-- budgets the user's record names, settle and release find the user from the call id), so
-- this is for a single Redis server, not Redis Cluster.
--
-- ARGV: prefix, operation, now, applied-id TTL, applied-id limit, the number of calendar
-- periods given, then for each (days, timezone, start of the period holding now), then the
-- operation's own arguments. Lua has no timezone database: a calendar window whose period is
-- not given is not rolled, and the reply names the periods needed instead ({"bounds", ...});
-- nothing is written then, and Python runs the operation again with them.
--
-- Numbers travel as text and are written back with 17 significant digits, so a double
-- survives the trip exactly and the arithmetic is the same double arithmetic as Python's.
-- The reply is one JSON string: {"ok", ...} or an error status for Python to raise.

local prefix, op, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local APPLIED_TTL, APPLIED_LIMIT = tonumber(ARGV[4]), tonumber(ARGV[5])

local function fmt(x) return string.format('%.17g', x) end
local function opt(s) if s ~= '' then return s end return nil end  -- '' stands for None
local function optnum(s) if s ~= '' then return tonumber(s) end return nil end
local function record_key(key) return prefix .. 'user:' .. key end
local function call_key(call_id) return prefix .. 'call:' .. call_id end
-- overruns.OVERRUN_TOLERANCE (a test checks that they agree)
local OVERRUN_TOLERANCE = 1e-9
-- limits.MAX_AMOUNT, the most a record holds (a test checks that they agree)
local MAX_AMOUNT = 1e15
-- subjects.GLOBAL: litellm's global budget, admitted in soft mode (reservations.mode_for)
local GLOBAL = 'litellm.max_budget'

-- Calendar periods given by Python, and those a record needed that were not.
local periods, needed, missing = {}, {}, {}
local function spec(days, timezone) return fmt(days) .. ' ' .. timezone end
local FIRST = 7 + 3 * tonumber(ARGV[6])  -- the operation's first argument
for i = 7, FIRST - 1, 3 do periods[spec(tonumber(ARGV[i]), ARGV[i + 1])] = tonumber(ARGV[i + 2]) end

-- Writes wait until the operation is decided: none are made if a period was missing.
local writes = {}
local function later(fn) writes[#writes + 1] = fn end

-- The ``n`` strings that follow the count at op argument ``k`` (1-based).
local function list_at(k)
  local at = FIRST + k - 1
  local out = {}
  for i = at + 1, at + tonumber(ARGV[at]) do out[#out + 1] = ARGV[i] end
  return out
end

-- The server-side lease of a hold: at least 1 ms, at most ~30,000 years (PX's range).
local function lease_ms(expires_at)
  return math.min(1e15, math.max(1, math.ceil((expires_at - now) * 1000)))
end

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

-- A hold as stored: "<amount> <expires_at>", then JSON of its model and the other budgets
-- holding the call ("also"), if any.
local function read_hold(value)
  local amount, expires_at, rest = string.match(value, '^(%S+) (%S+) ?(.*)$')
  local hold = {amount = tonumber(amount), expires_at = tonumber(expires_at)}
  if rest ~= '' then
    hold.tail = rest
    local more = cjson.decode(rest)
    hold.model, hold.also = more.model, more.also
  end
  return hold
end

local function write_hold(hold)
  local text = fmt(hold.amount) .. ' ' .. fmt(hold.expires_at)
  if hold.tail then return text .. ' ' .. hold.tail end
  return text
end

-- More windows: JSON of objects whose numbers are text (cjson would round them to 14 digits).
local function read_windows(json)
  local out = {}
  for i, w in ipairs(cjson.decode(json)) do
    out[i] = {budget = tonumber(w.budget), spend = tonumber(w.spend), start = tonumber(w.start),
              duration = w.duration and tonumber(w.duration), timezone = w.timezone, model = w.model}
  end
  return out
end

local function write_windows(windows)
  if #windows == 0 then return '[]' end  -- cjson writes an empty table as {}
  local out = {}
  for i, w in ipairs(windows) do
    out[i] = {budget = fmt(w.budget), spend = fmt(w.spend), start = fmt(w.start),
              duration = w.duration and fmt(w.duration), timezone = w.timezone, model = w.model}
  end
  return cjson.encode(out)
end

local TEXT_FIELDS = {team = true, timezone = true, extra = true, applied = true}
local loaded = {}

local function load(key)
  if loaded[key] then return loaded[key] end
  local flat = redis.call('HGETALL', record_key(key))
  if #flat == 0 then return nil end
  local r = {key = key, flat = flat, models = {}, held = {}, gone = {}}
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    local kind, name = string.match(field, '^([mr]):(.*)$')
    if kind == 'm' then
      r.models[name] = tonumber(value)
    elseif kind == 'r' then
      r.held[name] = read_hold(value)
    elseif field == 'windows' then
      r.windows = read_windows(value)
    elseif TEXT_FIELDS[field] then
      r[field] = value
    else
      r[field] = tonumber(value)
    end
  end
  loaded[key] = r
  return r
end

-- budget.new_record
local function new_record(key, total_budget, duration)
  local r = {key = key, new = true, models = {}, held = {}, gone = {}, total_budget = total_budget,
             duration = duration, current_cost = 0, created_at = now, last_updated_at = now}
  loaded[key] = r
  return r
end

local function load_or_default(user, default_total, default_duration, has_default)
  return load(user) or (has_default == '1' and new_record(user, optnum(default_total), optnum(default_duration)))
    or nil
end

-- Call ids already charged: {{id, time}, ...}, oldest first, decoded when first needed.
local function applied(r)
  if not r.applied_list then r.applied_list = r.applied and cjson.decode(r.applied) or {} end
  return r.applied_list
end

local function was_applied(r, call_id)
  for _, entry in ipairs(applied(r)) do
    if entry[1] == call_id then return true end
  end
  return false
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

-- The call's index entry names the user whose hold lists the others: drop it only from there.
local function drop_call(call_id, key)
  if redis.call('GET', call_key(call_id)) == key then redis.call('DEL', call_key(call_id)) end
end

-- Rewrite the record's hash (once the operation is decided); returns its fields as HGETALL would.
local function save(r)
  local fields = {'current_cost', fmt(r.current_cost), 'created_at', fmt(r.created_at),
                  'last_updated_at', fmt(r.last_updated_at)}
  local function add(field, value) fields[#fields + 1] = field; fields[#fields + 1] = value end
  if r.total_budget then add('total_budget', fmt(r.total_budget)) end
  if r.duration then add('duration', fmt(r.duration)) end
  if r.overruns then add('overruns', fmt(r.overruns)) end
  if r.overrun_cost then add('overrun_cost', fmt(r.overrun_cost)) end
  if r.team then add('team', r.team) end
  if r.timezone then add('timezone', r.timezone) end
  if r.windows then add('windows', write_windows(r.windows)) end
  if r.extra then add('extra', r.extra) end
  for model, cost in pairs(r.models) do add('m:' .. model, fmt(cost)) end
  for call_id, held in pairs(r.held) do add('r:' .. call_id, write_hold(held)) end
  if r.applied_changed then
    if #r.applied_list > 0 then add('applied', cjson.encode(r.applied_list)) end
  elseif r.applied then
    add('applied', r.applied)
  end
  r.fields = fields
  local gone = r.gone
  r.gone = {}
  later(function()
    local key = record_key(r.key)
    redis.call('DEL', key)
    for i = 1, #fields, 1000 do  -- in slices: unpack is limited by Lua's stack
      redis.call('HSET', key, unpack(fields, i, math.min(i + 999, #fields)))
    end
    if r.new then redis.call('SADD', prefix .. 'users', r.key) end
    for _, call_id in ipairs(gone) do drop_call(call_id, r.key) end
  end)
  return fields
end

-- overruns.overrun: how much a call's cost exceeds its hold (0 within float noise, or no hold).
local function overrun(cost, held)
  if held == nil or cost <= held * (1 + OVERRUN_TOLERANCE) then return 0 end
  return cost - held
end

-- windows.applies_to
local function applies_to(w, model) return w.model == nil or w.model == model end

-- budget.charge: 'applied' if the call id was charged already, 'too_large' if a sum would
-- pass MAX_AMOUNT (nothing changed then), else 'ok'. A cost above held counts as an overrun.
local function charge(r, cost, model, call_id, held)
  if call_id and was_applied(r, call_id) then return 'applied' end
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

-- reservations.reserved: held by other calls (with ``only``, those a window of that model counts).
local function reserved(r, exclude, only)
  local sum = 0
  for call_id, held in pairs(r.held) do
    if held.expires_at > now and call_id ~= exclude and (only == nil or (held.model or only) == only) then
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
  if r.team then
    if string.sub(r.team, 1, 5) == 'team:' then add(r.team) else add('team:' .. r.team) end
  end
  for _, key in ipairs(more) do add(key) end
  return keys
end

-- reservations.charge_all: the records changed, or nil if a sum would pass MAX_AMOUNT.
local function charge_all(user, u, cost, model, call_id, held, more)
  local hold = call_id and u.held[call_id]
  local keys = {}
  for _, key in ipairs(hold and hold.also or {}) do keys[#keys + 1] = key end
  for _, key in ipairs(more) do keys[#keys + 1] = key end
  local changed = {}
  for _, key in ipairs(charged_subjects(user, u, keys)) do
    local r = key == user and u or load(key) or new_record(key, nil, nil)
    local own = call_id and r.held[call_id]
    local status = charge(r, cost, model, call_id, own and own.amount or held)
    if status == 'too_large' then return nil end
    if status == 'ok' then changed[#changed + 1] = r end
  end
  return changed
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
  local old = load(user)
  if old then
    for call_id in pairs(old.held) do drop_call(call_id, user) end
  end
  redis.call('DEL', record_key(user))
  local fields = list_at(2)
  for i = 1, #fields, 1000 do
    redis.call('HSET', record_key(user), unpack(fields, i, math.min(i + 999, #fields)))
  end
  redis.call('SADD', prefix .. 'users', user)
  loaded[user] = nil
  -- the index names users (subjects.kind_of): a team's, tag's or the global hold is found
  -- through the user's hold, which lists it
  if string.match(user, '^team:') or string.match(user, '^tag:') or user == GLOBAL then return {'ok'} end
  for call_id, held in pairs(load(user).held) do
    if not redis.call('GET', call_key(call_id)) then
      redis.call('SET', call_key(call_id), user, 'PX', lease_ms(held.expires_at))
    end
  end
  return {'ok'}
end

function ops.delete(user)
  local r = load(user)
  if not r then return {'ok', 0} end
  for call_id in pairs(r.held) do drop_call(call_id, user) end
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

-- Op argument 9 counts the budgets given besides the user's (subjects=), which follow it.
function ops.charge(user, cost, model, call_id, default_total, default_duration, has_default, held)
  local u = load_or_default(user, default_total, default_duration, has_default)
  if not u then return {'unknown'} end
  local changed = charge_all(user, u, tonumber(cost), model, opt(call_id), optnum(held), list_at(9))
  if not changed then return {'too_large'} end
  for _, r in ipairs(changed) do save(r) end
  return {'ok', u.fields or u.flat}
end

-- reservations.reserve_all. Op argument 11 counts the budgets given besides the user's.
function ops.reserve(user, call_id, amount, ttl, mode, default_total, default_duration, has_default, at_least, model)
  local u = load_or_default(user, default_total, default_duration, has_default)
  if not u then return {'unknown'} end
  if was_applied(u, call_id) then return {'ok', u.flat} end
  amount, at_least, model = tonumber(amount), optnum(at_least), opt(model)
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
  later(function() redis.call('SET', call_key(call_id), user, 'PX', lease_ms(expires_at)) end)
  return {'ok', u.fields}
end

local function owner(call_id, user)
  return opt(user) or redis.call('GET', call_key(call_id))
end

function ops.settle(call_id, cost, model, user)
  user = owner(call_id, user)
  local u = user and load(user)
  if not u then return {'ok', 0} end
  local hold = u.held[call_id]  -- read before charge rolls the window and drops expired holds
  local changed = charge_all(user, u, tonumber(cost), model, call_id, hold and hold.amount, {})
  if not changed then return {'too_large'} end
  for _, r in ipairs(changed) do save(r) end
  return {'ok', u.fields and 1 or 0}
end

-- reservations.release_all
function ops.release(call_id, user)
  user = owner(call_id, user)
  local u = user and load(user)
  local hold = u and u.held[call_id]
  if not hold then return {'ok', 0} end
  for _, key in ipairs({user, unpack(hold.also or {})}) do
    local r = load(key)
    if r and r.held[call_id] then
      current_window(r)
      if r.held[call_id] then
        r.held[call_id] = nil
        table.insert(r.gone, call_id)
        save(r)
      end
    end
  end
  return {'ok', u.fields and 1 or 0}
end

-- At most 11 fixed arguments (reserve's); lists stay in ARGV (see list_at).
local reply = ops[op](unpack(ARGV, FIRST, math.min(#ARGV, FIRST + 10)))
if #missing > 0 then return cjson.encode({'bounds', missing}) end
for _, write in ipairs(writes) do write() end
return cjson.encode(reply)
