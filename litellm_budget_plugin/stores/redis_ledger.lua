-- The ledger of litellm_budget_plugin.stores.redis: an entry for each charge applied, added to
-- the stream <prefix>ledger by the script that applies the charge (no round trip, lock or read
-- of its own). It comes after redis_records.lua and before redis_budget.lua in the one script.
--
-- Python encodes each entry as litellm_budget_plugin.ledger.encode does, all but its user and
-- subjects, which only this script knows (the budgets it charged): it sends the JSON before
-- the user ("[<time>,") and after the subjects (",<model>,<tokens>,<tokens>,<cost>,<call id>]"),
-- so numbers are Python's (cjson would round them to 14 digits) and the format has one place.
--
-- A stream id is the entry's time in milliseconds, or the stream's last id if that is later
-- (another client's clock is ahead): ids must grow. Entries older than the retention are
-- trimmed as entries are added, in whole stream nodes (MINID ~, at most Redis's default LIMIT
-- a call, so a shorter retention never stalls the server); Python lists none of them.

-- The ledger arguments at op argument ``k``: '' if the store keeps no ledger; else the entry's
-- JSON before its user and after its subjects, the oldest stream id to keep (milliseconds),
-- the most entries to keep ('': no cap), then the count of the call's tag keys, and the keys.
local function ledger_at(k)
  local at = FIRST + k - 1
  if ARGV[at] == '' then return nil end
  return {head = ARGV[at], tail = ARGV[at + 1], min_id = ARGV[at + 2], max_len = opt(ARGV[at + 3]),
          tags = list_at(k + 4)}
end

-- Why the entry of this operation could not be added (its charge is written all the same, as
-- the file store writes a charge whose ledger file fails), for Python to log.
local ledger_error = nil

-- The id the stream last gave (XINFO: the last entry may have been deleted since), in ms.
local function last_ms(key)
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return string.match(info[i + 1], '^(%d+)%-') end
  end
  return nil
end

local function add_entry(key, book, line)
  local ms = string.format('%.0f', math.floor(now * 1000))
  local added = redis.pcall('XADD', key, 'MINID', '~', book.min_id, ms .. '-*', 'e', line)
  if type(added) == 'table' and added.err and string.find(added.err, 'smaller', 1, true) then
    local top = last_ms(key)
    if top then added = redis.pcall('XADD', key, 'MINID', '~', book.min_id, top .. '-*', 'e', line) end
  end
  if type(added) == 'table' and added.err then
    ledger_error = added.err
  elseif book.max_len then
    redis.pcall('XTRIM', key, 'MAXLEN', '~', book.max_len)
  end
end

-- ledger.entries_of: the entry of a charge applied to the records ``changed`` (the user's
-- first, then the others in the order charged), none if it changed none (a call id charged
-- already). Its subjects: the other budgets charged, then the call's tags not among them.
local function record_charge(book, changed)
  if not book or #changed == 0 then return end
  local user = changed[1].key
  local subjects, seen = {}, {[user] = true}
  local function add(key)
    if not seen[key] then
      seen[key] = true
      subjects[#subjects + 1] = cjson.encode(key)
    end
  end
  for i = 2, #changed do add(changed[i].key) end
  for _, tag in ipairs(book.tags) do add(tag) end
  -- built by hand: cjson writes an empty list as {}
  local line = book.head .. cjson.encode(user) .. ',[' .. table.concat(subjects, ',') .. ']' .. book.tail
  later(function() add_entry(prefix .. 'ledger', book, line) end)
end
