-- The ledger of litellm_budget_plugin.stores.redis: an entry for each charge applied, added to
-- the stream <prefix>ledger by the script that applies the charge (no round trip, lock or read
-- of its own). It comes after redis_records.lua and before redis_budget.lua in the one script.
--
-- Python encodes each entry as litellm_budget_plugin.ledger.encode does, all but its user and
-- subjects, which only this script knows (the budgets it charged): it sends the JSON before
-- the user ("[<time>,") and after the subjects (",<model>,<tokens>,<tokens>,<cost>,<call id>]"),
-- so numbers are Python's (cjson would round them to 14 digits) and the format has one place.
--
-- A stream id is the Redis server's time (not the entry's, which is the client's). Entries older
-- than the retention are trimmed as entries are added, in whole stream nodes (MINID ~, at most
-- Redis's default LIMIT a call, so a shorter retention never stalls the server); Python lists
-- none older than the retention by its own clock either.

-- The ledger arguments at op argument ``k``: '' if the store keeps no ledger; else the entry's
-- JSON before its user and after its subjects, how long entries are kept (milliseconds),
-- the most entries to keep ('': no cap), then the count of the call's tag keys, and the keys.
local function ledger_at(k)
  local at = FIRST + k - 1
  if ARGV[at] == '' then return nil end
  return {head = ARGV[at], tail = ARGV[at + 1], kept_ms = tonumber(ARGV[at + 2]), max_len = opt(ARGV[at + 3]),
          tags = list_at(k + 4)}
end

-- Why the entry of this operation could not be added (its charge is written all the same, as
-- the file store writes a charge whose ledger file fails), for Python to log.
local ledger_error = nil

-- The entry goes at the stream's end with an id of the Redis server's clock ('*'): one client
-- whose clock is ahead can neither hide the others' later entries from reads nor trim them, and
-- entries older than the retention by that clock are trimmed as entries are added.
local function add_entry(key, book, line)
  local time = redis.call('TIME')
  local oldest = math.max(0, tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) - book.kept_ms)
  local added = redis.pcall('XADD', key, 'MINID', '~', string.format('%.0f', oldest), '*', 'e', line)
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
