-- Bounded replacements of library functions that loop in C (see bounded/mod.rs).
-- Runs once per state, before the sandbox prelude, with the original globals.
local G, core = ...
local type, select, error, pcall, getmetatable, tonumber, tostring =
  type, select, error, pcall, getmetatable, tonumber, tostring
local tointeger, ult, min, max, maxinteger = math.tointeger, math.ult, math.min, math.max, math.maxinteger
local format, sub = string.format, string.sub
local c_find, c_match, c_gmatch, c_gmatch_next = core.find, core.match, core.gmatch, core.gmatch_next
local c_gsub, c_gsub_next, c_gsub_put, c_rep = core.gsub, core.gsub_next, core.gsub_put, core.rep
local checktab, out_of_memory, tramp = core.checktab, core.out_of_memory, core.tramp
local native_concat, native_insert, native_remove, native_move, native_sort =
  table.concat, table.insert, table.remove, table.move, table.sort

-- Elements a native table function may visit in one call, and the largest plain table
-- handed to the native sort (its comparisons are not seen by the instruction hook).
local CHUNK, SORT_NATIVE = 1024, 50000
local INT_MAX = 2147483647

---------------------------------------------------------------------------- string

-- Each public function is `tramp(impl)`: a C frame calling the Lua implementation. Seen
-- from an implementation, level 2 is that C frame and level 3 its caller, whose position
-- luaL_error would put in the message.

-- `true, results...` or `false, message`. Tail-called by implementations (it takes their
-- place): level 3 is the caller of the C frame.
local function ret(ok, ...)
  if ok then return ... end
  error((...), 3)
end

G.string.find = tramp(function(...) return ret(c_find(...)) end)
G.string.match = tramp(function(...) return ret(c_match(...)) end)
G.string.rep = tramp(function(...) return ret(c_rep(...)) end)

G.string.gmatch = tramp(function(...)
  local ok, st = c_gmatch(...)
  if not ok then error(st, 3) end
  return tramp(function() return ret(c_gmatch_next(st)) end)
end)

-- One callback replacement: `code, ...` from gsub_next; 1 = a match (its captures follow).
local function gsub_call(st, repl, isfn, code, ...)
  if code ~= 1 then return code, ... end
  local v
  if isfn then v = repl(...) else v = repl[(...)] end
  local msg = c_gsub_put(st, v)
  if msg then return -1, msg end
  return 1
end

G.string.gsub = tramp(function(...)
  local code, a, b = c_gsub(...)
  if code == 0 then return a, b end
  if code == -1 then error(a, 3) end
  local st, repl = a, b
  local isfn = type(repl) == "function"
  while true do
    local c, x, y = gsub_call(st, repl, isfn, c_gsub_next(st))
    if c == 0 then return x, y end
    if c == -1 then error(x, 3) end
  end
end)

---------------------------------------------------------------------------- table
-- Arguments are checked here as ltablib checks them (same messages), so the native
-- functions, called only with valid arguments, raise no errors of their own.

local function got(v, i, nargs)
  if i > nargs then return "no value" end
  return type(v)
end

-- `depth`: Lua frames between argerr and the implementation (0: called by it directly).
local function argerr(i, fname, msg, depth)
  error(format("bad argument #%d to '%s' (%s)", i, fname, msg), 4 + (depth or 0))
end

local function checkint(v, i, nargs, fname)
  local tv = type(v)
  local n = v
  if tv == "string" then n = tonumber(v) end
  if type(n) == "number" then
    local r = tointeger(n)
    if r then return r end
    argerr(i, fname, "number has no integer representation", 1)
  end
  argerr(i, fname, "number expected, got " .. got(v, i, nargs), 1)
end

local function check_table(t, i, nargs, fname, what)
  if type(t) ~= "table" and not checktab(t, what) then
    argerr(i, fname, "table expected, got " .. got(t, i, nargs), 1)
  end
end

-- luaL_len, called by an implementation.
local function len(t)
  local n = #t
  if type(n) == "string" then n = tonumber(n) end
  local r = type(n) == "number" and tointeger(n)
  if not r then error("object length is not an integer", 4) end
  return r
end

local function plain(t)
  return type(t) == "table" and getmetatable(t) == nil
end

-- Re-raises what a native call under pcall raised, as it would have been raised without
-- the wrapper: `positioned` messages get the caller's position (luaL_error); errors of
-- the wrapper's own comparator lose the wrapper's position; the rest pass unchanged.
local function reraise(positioned, ok, ...)
  if ok then return ... end
  local e = ...
  if type(e) == "string" then
    if e == "not enough memory" then out_of_memory() end
    if positioned(e) then error(e, 3) end
    if sub(e, 1, 8) == "sandbox:" and e:find("^sandbox:%d+: ") then e = e:gsub("^sandbox:%d+: ", "", 1) end
  end
  error(e, 0)
end

local function concat_positioned(e) return sub(e, 1, 15) == "invalid value (" end

G.table.concat = tramp(function(...)
  local nargs = select("#", ...)
  local t, sep, i, j = ...
  check_table(t, 1, nargs, "concat", 5)
  local last = len(t)
  if sep == nil then sep = ""
  elseif type(sep) == "number" then sep = tostring(sep)
  elseif type(sep) ~= "string" then argerr(2, "concat", "string expected, got " .. got(sep, 2, nargs)) end
  if i == nil then i = 1 else i = checkint(i, 3, nargs, "concat") end
  if j ~= nil then last = checkint(j, 4, nargs, "concat") end
  if plain(t) then
    -- Stops at the first missing element: bounded by the table's real size.
    return reraise(concat_positioned, pcall(native_concat, t, sep, i, last))
  end
  local parts, n = {}, 0
  for k = i, last do
    local v = t[k]
    local tv = type(v)
    if tv ~= "string" and tv ~= "number" then
      error(format("invalid value (%s) at index %d in table for 'concat'", tv, k), 3)
    end
    n = n + 1
    parts[n] = v
  end
  return native_concat(parts, sep)
end)

G.table.insert = tramp(function(...)
  local nargs = select("#", ...)
  local t, a, b = ...
  check_table(t, 1, nargs, "insert", 7)
  local e = len(t) + 1
  if nargs == 2 then
    t[e] = a
  elseif nargs == 3 then
    local pos = checkint(a, 2, nargs, "insert")
    if not ult(pos - 1, e) then argerr(2, "insert", "position out of bounds") end
    if plain(t) then
      native_insert(t, pos, b)
    else
      for k = e, pos + 1, -1 do t[k] = t[k - 1] end
      t[pos] = b
    end
  else
    error("wrong number of arguments to 'insert'", 3)
  end
end)

G.table.remove = tramp(function(...)
  local nargs = select("#", ...)
  local t, pos = ...
  check_table(t, 1, nargs, "remove", 7)
  local size = len(t)
  if pos == nil then pos = size else pos = checkint(pos, 2, nargs, "remove") end
  if pos ~= size and ult(size, pos - 1) then argerr(2, "remove", "position out of bounds") end
  if plain(t) then return (native_remove(t, pos)) end
  local v = t[pos]
  while pos < size do
    t[pos] = t[pos + 1]
    pos = pos + 1
  end
  t[pos] = nil
  return v
end)

-- Copies a chunk at a time, in the order the native function would.
G.table.move = tramp(function(...)
  local nargs = select("#", ...)
  local a1, f, e, t, a2 = ...
  f = checkint(f, 2, nargs, "move")
  e = checkint(e, 3, nargs, "move")
  t = checkint(t, 4, nargs, "move")
  local tt, tti = a1, 1
  if a2 ~= nil then tt, tti = a2, 5 end
  check_table(a1, 1, nargs, "move", 1)
  check_table(tt, tti, nargs, "move", 2)
  if e >= f then
    if not (f > 0 or e < maxinteger + f) then argerr(3, "move", "too many elements to move") end
    local n = e - f + 1
    if not (t <= maxinteger - n + 1) then argerr(4, "move", "destination wrap around") end
    if t > e or t <= f or (tti ~= 1 and not (a1 == tt)) then
      for k = 0, n - 1, CHUNK do
        local hi = min(k + CHUNK, n) - 1
        native_move(a1, f + k, f + hi, t + k, tt)
      end
    else
      for hi = n - 1, 0, -CHUNK do
        local lo = max(hi - CHUNK + 1, 0)
        native_move(a1, f + lo, f + hi, t + lo, tt)
      end
    end
  end
  return tt
end)

local function lt(a, b) return a < b end
local function sort_positioned(e) return e == "invalid order function for sorting" end

G.table.sort = tramp(function(...)
  local nargs = select("#", ...)
  local t, cmp = ...
  check_table(t, 1, nargs, "sort", 7)
  local n = len(t)
  if n > 1 then
    if n >= INT_MAX then argerr(1, "sort", "array too big") end
    if cmp ~= nil and type(cmp) ~= "function" then
      argerr(2, "sort", "function expected, got " .. type(cmp))
    end
    local f = cmp
    if not plain(t) or n > SORT_NATIVE then
      -- Every comparison runs Lua code, where the instruction hook sees it.
      if cmp == nil then f = lt else f = function(a, b) return cmp(a, b) end end
    end
    return reraise(sort_positioned, pcall(native_sort, t, f))
  end
end)
