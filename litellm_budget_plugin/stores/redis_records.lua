-- Records as the Redis store keeps them, for litellm_budget_plugin.stores.redis: the script's
-- arguments, reading a record's hash (checking every field it uses), writing it back. The
-- arithmetic that runs on these records is in redis_budget.lua, which follows this file in
-- the one script Python sends (stores/redis.py joins them).
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
--
-- A record whose hash holds a field this store would not write (text where a number goes,
-- JSON that does not parse or has the wrong shape) stops the operation before anything is
-- written: the reply is {"corrupt", key, what} and Python raises StoreCorruptError.

local prefix, op, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local APPLIED_TTL, APPLIED_LIMIT = tonumber(ARGV[4]), tonumber(ARGV[5])

local function fmt(x) return string.format('%.17g', x) end
local function opt(s) if s ~= '' then return s end return nil end  -- '' stands for None
local function optnum(s) if s ~= '' then return tonumber(s) end return nil end
local function record_key(key) return prefix .. 'user:' .. key end
local function call_key(call_id) return prefix .. 'call:' .. call_id end
-- limits.MAX_AMOUNT, the most a record holds (a test checks that they agree)
local MAX_AMOUNT = 1e15
-- limits.MAX_TIMESTAMP (3000-01-01)
local MAX_TIMESTAMP = 32503680000
-- limits.parse_duration's range, in days: 1 second (allowing for its rounding) to 100 years
local MIN_DAYS, MAX_DAYS = (1 - 1e-9) / 86400, 36500
-- subjects.GLOBAL: litellm's global budget, admitted in soft mode (reservations.mode_for)
local GLOBAL = 'litellm.max_budget'

-- subjects.kind_of
local function kind_of(key)
  if string.sub(key, 1, 5) == 'team:' then return 'team' end
  if string.sub(key, 1, 4) == 'tag:' then return 'tag' end
  return 'user'
end

-- Calendar periods given by Python, and those a record needed that were not.
local periods, needed, missing = {}, {}, {}
local function spec(days, timezone) return fmt(days) .. ' ' .. timezone end
local FIRST = 7 + 3 * tonumber(ARGV[6])  -- the operation's first argument
for i = 7, FIRST - 1, 3 do periods[spec(tonumber(ARGV[i]), ARGV[i + 1])] = tonumber(ARGV[i + 2]) end

-- Writes wait until the operation is decided: none are made if a period was missing or a
-- record was corrupt.
local writes = {}
local function later(fn) writes[#writes + 1] = fn end

-- The ``n`` strings that follow the count at op argument ``k`` (1-based).
local function list_at(k)
  local at = FIRST + k - 1
  local out = {}
  for i = at + 1, at + tonumber(ARGV[at]) do out[#out + 1] = ARGV[i] end
  return out
end

-- --- reading a record, checking what it uses ---------------------------------------------

-- Raised (as a table) by the checks below; the script's last lines turn it into a reply.
local function corrupt(key, why) error({corrupt = true, key = key, why = why}, 0) end

-- A number from a field: finite, between low and high.
local function number(key, what, text, low, high)
  local x = type(text) == 'string' and tonumber(text)
  if not x or x ~= x or x < low or x > high then
    corrupt(key, what .. ' must be a number from ' .. fmt(low) .. ' to ' .. fmt(high) .. ', got ' ..
      string.sub(tostring(text), 1, 40))
  end
  return x
end
local function amount(key, what, text) return number(key, what, text, 0, MAX_AMOUNT) end
local function timestamp(key, what, text) return number(key, what, text, 0, MAX_TIMESTAMP) end

local function text(key, what, value)
  if type(value) ~= 'string' or value == '' then corrupt(key, what .. ' must be a non-empty string') end
  return value
end

-- A decoded JSON list (``list``) or object: cjson gives a table either way.
local function shaped(key, what, value, list)
  if type(value) == 'table' then
    local count = 0
    for _ in pairs(value) do count = count + 1 end
    if (list and count == #value) or (not list and #value == 0) then return value end
  end
  corrupt(key, what .. (list and ' must be a list' or ' must be an object'))
end

local function decode(key, what, json, list)
  local ok, value = pcall(cjson.decode, json)
  if not ok then corrupt(key, what .. ' is not JSON') end
  return shaped(key, what, value, list)
end

-- A hold as stored: "<amount> <expires_at>", then JSON of its model and the other budgets
-- holding the call ("also"), if any.
local function read_hold(key, call_id, value)
  local held, expires_at, rest = string.match(value, '^(%S+) (%S+) ?(.*)$')
  local what = 'hold ' .. call_id
  local hold = {amount = amount(key, what, held), expires_at = timestamp(key, what, expires_at)}
  if rest ~= '' then
    hold.tail = rest
    local more = decode(key, what, rest, false)
    if more.model ~= nil then hold.model = text(key, what .. ': model', more.model) end
    if more.also ~= nil then
      hold.also = shaped(key, what .. ': also', more.also, true)
      for _, other in ipairs(hold.also) do text(key, what .. ': also', other) end
    end
  end
  return hold
end

local function write_hold(hold)
  local written = fmt(hold.amount) .. ' ' .. fmt(hold.expires_at)
  if hold.tail then return written .. ' ' .. hold.tail end
  return written
end

-- More windows: JSON of objects whose numbers are text (cjson would round them to 14 digits).
local function read_windows(key, json)
  local out = {}
  for i, w in ipairs(decode(key, 'windows', json, true)) do
    local what = 'window ' .. i
    shaped(key, what, w, false)
    local window = {budget = amount(key, what .. ' budget', w.budget), spend = amount(key, what .. ' spend', w.spend),
                    start = timestamp(key, what .. ' start', w.start)}
    if w.duration ~= nil then window.duration = number(key, what .. ' duration', w.duration, MIN_DAYS, MAX_DAYS) end
    if w.timezone ~= nil then window.timezone = text(key, what .. ' timezone', w.timezone) end
    if w.model ~= nil then window.model = text(key, what .. ' model', w.model) end
    out[i] = window
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

-- limits._check_subject_field: only a user belongs to a team, named without "team:team:".
local function read_team(key, team)
  text(key, 'team', team)
  local name = string.gsub(team, '^team:', '', 1)
  if kind_of(key) ~= 'user' or string.match(name, '^%s*$') or string.sub(name, 1, 5) == 'team:' then
    corrupt(key, 'team ' .. string.sub(team, 1, 80) .. ' cannot be this budget\'s team')
  end
  return team
end

local AMOUNTS = {total_budget = true, current_cost = true, overrun_cost = true}
local TIMES = {created_at = true, last_updated_at = true}
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
      r.models[name] = amount(key, field, value)
    elseif kind == 'r' then
      r.held[name] = read_hold(key, name, value)
    elseif AMOUNTS[field] then
      r[field] = amount(key, field, value)
    elseif TIMES[field] then
      r[field] = timestamp(key, field, value)
    elseif field == 'duration' then
      r.duration = number(key, field, value, MIN_DAYS, MAX_DAYS)
    elseif field == 'overruns' then
      r.overruns = number(key, field, value, 0, MAX_AMOUNT)
      if r.overruns % 1 ~= 0 then corrupt(key, 'overruns must be a whole number') end
    elseif field == 'windows' then
      r.windows = read_windows(key, value)
    elseif field == 'team' then
      r.team = read_team(key, value)
    elseif field == 'timezone' then
      r.timezone = text(key, field, value)
    elseif field == 'extra' then
      decode(key, field, value, false)  -- kept as written: Python reads it
      r.extra = value
    elseif field == 'applied' then
      r.applied = value  -- decoded (and checked) when first needed: see applied()
    end  -- a field of no meaning here (none is written) is dropped by the next write
  end
  if not r.current_cost or not r.created_at or not r.last_updated_at then
    corrupt(key, 'current_cost, created_at and last_updated_at are required')
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

-- Call ids already charged (a user's record only): {{id, time}, ...}, oldest first, decoded
-- and checked when first needed.
local function applied(r)
  if not r.applied_list then
    local list = r.applied and decode(r.key, 'applied', r.applied, true) or {}
    for _, entry in ipairs(list) do
      if type(entry) ~= 'table' or type(entry[1]) ~= 'string' then corrupt(r.key, 'applied must list [id, time]') end
      timestamp(r.key, 'applied time', entry[2])
    end
    r.applied_list = list
  end
  return r.applied_list
end

local function was_applied(r, call_id)
  for _, entry in ipairs(applied(r)) do
    if entry[1] == call_id then return true end
  end
  return false
end

-- --- writing records back -----------------------------------------------------------------

-- The call index (settle and release by call id alone) names the user whose hold lists the
-- others. A team, a tag or the global budget holds a call for a user; one still holding a call
-- no user holds (the user's record was replaced or deleted meanwhile) is named by its next
-- write instead, as the file store's journal does.
local function holds_for_itself(key) return kind_of(key) == 'user' and key ~= GLOBAL end

local function index_calls(key, call_ids)
  for _, call_id in ipairs(call_ids) do
    if holds_for_itself(key) then
      redis.call('SET', call_key(call_id), key)
    else
      redis.call('SET', call_key(call_id), key, 'NX')
    end
  end
end

-- Drop a call's index entry if it names this record.
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
    if not holds_for_itself(r.key) and next(r.held) then
      local ids = {}
      for call_id in pairs(r.held) do ids[#ids + 1] = call_id end
      index_calls(r.key, ids)
    end
  end)
  return fields
end

-- The call ids a hash holds, read without checking the rest (put and delete replace a record
-- whatever it holds).
local function held_ids(key)
  local ids = {}
  for _, field in ipairs(redis.call('HKEYS', record_key(key))) do
    local call_id = string.match(field, '^r:(.*)$')
    if call_id then ids[#ids + 1] = call_id end
  end
  return ids
end
