-- wrk script for SayPI's benchmark: replays a request file, optionally paced.
--
--   wrk ... -s requests.lua URL -- REQUEST_FILE [RATE_PER_THREAD]
--
-- REQUEST_FILE: one request per line, "METHOD<TAB>PATH<TAB>TOKEN<TAB>BODY"
-- (TOKEN and BODY may be empty). Every request is built once, in init(); each
-- thread starts at its own offset and cycles through the list.
--
-- RATE_PER_THREAD > 0 paces the thread: requests are given send slots on a
-- fixed schedule (1 / rate apart) and delay() waits for the slot, so the
-- offered load is constant whatever the latency (until the server falls
-- behind the schedule). wrk times each request from the moment it is sent,
-- so the latencies are service times at that load (no coordinated-omission
-- correction, unlike wrk2).
--
-- done() prints one line "BENCH_RESULT {json}" that bench/wrk.py parses.

local requests = {}
local count = 0
local index = 0
local interval_us = 0
local next_slot = nil
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

local function split(line)
   local fields = {}
   local start = 1
   while true do
      local tab = string.find(line, "\t", start, true)
      if tab == nil then
         table.insert(fields, string.sub(line, start))
         return fields
      end
      table.insert(fields, string.sub(line, start, tab - 1))
      start = tab + 1
   end
end

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local now_buffer = ffi.new("bench_timespec")

local function now_us()
   ffi.C.clock_gettime(1, now_buffer) -- CLOCK_MONOTONIC
   return tonumber(now_buffer.tv_sec) * 1000000 + tonumber(now_buffer.tv_nsec) / 1000
end

function paced_delay()
   local now = now_us()
   if next_slot == nil then
      next_slot = now
   end
   next_slot = next_slot + interval_us
   local wait = next_slot - now
   if wait <= 0 then
      return 0
   end
   return math.floor(wait / 1000)
end

function init(args)
   local path = args[1]
   local file = assert(io.open(path, "r"))
   for line in file:lines() do
      if line ~= "" then
         local f = split(line)
         local method, target, token, body = f[1], f[2], f[3] or "", f[4] or ""
         local headers = {["Accept"] = "application/json"}
         if token ~= "" then
            headers["Authorization"] = "Bearer " .. token
         end
         if body == "" then
            body = nil
         else
            headers["Content-Type"] = "application/json"
         end
         count = count + 1
         requests[count] = wrk.format(method, target, headers, body)
      end
   end
   file:close()
   assert(count > 0, "empty request file")
   local me = thread_index or 0
   index = (me * 7919) % count
   local rate = tonumber(args[2] or "0") or 0
   if rate > 0 then
      interval_us = 1000000 / rate
      -- wrk checks for a global delay() after init(): unpaced runs keep its fast path.
      delay = paced_delay
   end
end

function request()
   index = index + 1
   if index > count then
      index = 1
   end
   return requests[index]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"stdev":%.1f,"min":%d,"max":%d,' ..
      '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.stdev, latency.min, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end
