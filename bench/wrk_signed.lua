-- wrk script: POST pre-generated, pre-signed API channel messages, each exactly once.
--
--   wrk -t T -c C -d 20s --latency -s bench/wrk_signed.lua \
--       http://127.0.0.1:PORT/channels/api/CHANNEL_ID/messages -- REQUESTS_FILE T
--
-- REQUESTS_FILE has one request per line: "sha256=<hex>" TAB <raw JSON body>.  Thread k (0-based) of T
-- sends lines k+1, k+1+T, k+1+2T, ... so no line is sent twice.  The file is read lazily (a line per
-- request), so no thread starts late because another one is still loading.
--
-- When a thread has used up its share it stops itself; each of its connections that asks for one more
-- request gets a cheap GET /healthz, counted as "filler" and never as ingest.  wrk keeps the clock running
-- until -d, so an exhausted run understates the rate: bench/ingest.py sizes the file to avoid that and
-- reports it when it happens.
--
-- Responses are counted by status in response() (202 = stored now, 200 = already stored, anything else
-- >= 300 = non-2xx); done() prints one machine-readable "BENCH ..." line plus up to three "BENCH_ERR ..."
-- samples per thread, which bench/ingest.py parses.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- Per-thread state: each wrk thread runs this file in its own Lua state.
local fh = nil
local nthreads = 1
local me = 0
local line_no = 0
local headers = {["Content-Type"] = "application/json", ["X-Aggregator-Signature"] = ""}
local filler = nil

sent = 0         -- ingest requests handed to wrk
created = 0      -- 202: stored now
duplicate = 0    -- 200 with a message_id: already stored (a request sent twice)
other2xx = 0
non2xx = 0
fillers = 0      -- answers to GET /healthz after the share ran out
exhausted = 0
err_samples = ""
local err_kept = 0

function init(args)
   fh = assert(io.open(args[1], "r"))
   nthreads = tonumber(args[2] or "1")
   me = tid or 0
   filler = wrk.format("GET", "/healthz", {}, nil)
end

local function next_line()
   while true do
      local line = fh:read("*l")
      if line == nil then
         return nil
      end
      line_no = line_no + 1
      if (line_no - 1) % nthreads == me then
         return line
      end
   end
end

function request()
   if exhausted == 0 then
      local line = next_line()
      if line ~= nil then
         local tab = line:find("\t", 1, true)
         headers["X-Aggregator-Signature"] = line:sub(1, tab - 1)
         sent = sent + 1
         return wrk.format("POST", nil, headers, line:sub(tab + 1))
      end
      exhausted = 1
      wrk.thread:stop()
   end
   return filler
end

function response(status, headers_, body)
   if status == 202 then
      created = created + 1
   elseif status >= 200 and status < 300 then
      if body and not body:find("message_id", 1, true) then
         fillers = fillers + 1
      elseif status == 200 then
         duplicate = duplicate + 1
      else
         other2xx = other2xx + 1
      end
   else
      non2xx = non2xx + 1
      if err_kept < 3 then
         err_kept = err_kept + 1
         local text = (body or ""):sub(1, 300):gsub("[\r\n]", " ")
         err_samples = err_samples .. "BENCH_ERR " .. status .. " " .. text .. "\n"
      end
   end
end

function done(summary, latency, _)
   local t = {sent = 0, created = 0, duplicate = 0, other2xx = 0, non2xx = 0, fillers = 0, exhausted = 0}
   local samples = ""
   for _, thread in ipairs(threads) do
      for key, _ in pairs(t) do
         t[key] = t[key] + (thread:get(key) or 0)
      end
      samples = samples .. (thread:get("err_samples") or "")
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d sent=%d created=%d duplicate=%d other2xx=%d non2xx=%d fillers=%d exhausted=%d " ..
      "duration_us=%d bytes=%d err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d " ..
      "lat_mean_us=%d lat_p50_us=%d lat_p90_us=%d lat_p99_us=%d lat_p999_us=%d lat_max_us=%d\n",
      summary.requests, t.sent, t.created, t.duplicate, t.other2xx, t.non2xx, t.fillers, t.exhausted,
      summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      math.floor(latency.mean), latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max))
   io.write(samples)
end
