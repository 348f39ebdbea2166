-- wrk script: POST unique events to /events (or batches to /events/batch).
-- Arguments after "--": <timestamp> <id prefix (8 hex)> <batch size, 0 = single events>
-- [<mode>]: "native" (default), "segment" (POST /v1/batch, the Python SDK's batch shape)
-- or "plausible" (POST /api/event as the script tag sends it; its time is the arrival).
-- Every event id is unique across threads and runs (prefix, thread, counter); all events
-- carry the one given timestamp, so they land in one known minute bucket, which the
-- benchmark reads back to check the count against the acknowledgements counted here.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  ts = args[1] or os.date("!%Y-%m-%dT%H:%M:%SZ")
  prefix = args[2] or string.format("%08x", math.random(0, 0x7fffffff))
  batch = tonumber(args[3] or "0")
  mode = args[4] or "native"
  counter = 0
  acked = 0      -- responses meaning "stored": 201, or 200 for a batch, 202 for /api/event
  bad = 0
  path = batch > 0 and "/events/batch" or "/events"
  if mode == "segment" then path = "/v1/batch" end
  if mode == "plausible" then path = "/api/event" end
end

-- A page call as segment-analytics-python queues it (its batch adds sentAt, left out
-- here so that every event lands in the one minute the benchmark reads back).
local function segment_page()
  counter = counter + 1
  return string.format(
    '{"type":"page","messageId":"%s-%d-%d","anonymousId":"anon-%d","userId":"u%d@example.com",' ..
    '"timestamp":"%s","name":"Docs","properties":{"url":"https://example.com/p%d","path":"/p%d",' ..
    '"title":"Docs"},"context":{"library":{"name":"analytics-python","version":"2.4.0"}},' ..
    '"integrations":{}}',
    prefix, tid, counter, counter % 977, (counter * 7919 + tid) % 10000, ts, counter % 50, counter % 50)
end

local agents = {}
for i = 0, 19 do
  agents[i] = string.format("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 " ..
    "(KHTML, like Gecko) Chrome/%d.0.0.0 Safari/537.36", 100 + i)
end

local function plausible_view()
  counter = counter + 1
  return string.format(
    '{"n":"pageview","u":"https://example.com/p%d?utm_source=news","d":"example.com",' ..
    '"r":"https://www.google.com/"}', counter % 50)
end

local function one()
  counter = counter + 1
  local id = string.format("%s-%04x-4%03x-8%03x-%012x", prefix, tid % 65536,
    math.floor(counter / 4096) % 4096, counter % 4096, counter)
  return string.format(
    '{"event_id":"%s","user_id":"u%d","timestamp":"%s","event_type":"page_view","payload":{"page_url":"https://example.com/p%d"}}',
    id, (counter * 7919 + tid) % 10000, ts, counter % 50)
end

request = function()
  local body
  if mode == "segment" then
    local parts = {}
    for i = 1, batch do parts[i] = segment_page() end
    body = '{"batch":[' .. table.concat(parts, ",") .. ']}'
    return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
  elseif mode == "plausible" then
    return wrk.format("POST", path, {["Content-Type"] = "text/plain",
      ["User-Agent"] = agents[counter % 20]}, plausible_view())
  elseif batch > 0 then
    local parts = {}
    for i = 1, batch do parts[i] = one() end
    body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  else
    body = one()
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

response = function(status, headers, body)
  if status == 201 or (batch > 0 and status == 200) or (mode == "plausible" and status == 202) then
    acked = acked + 1
  else
    bad = bad + 1
  end
end

done = function(summary, latency, requests)
  local total_acked, total_bad, total_sent = 0, 0, 0
  for _, t in ipairs(threads) do
    total_acked = total_acked + t:get("acked")
    total_bad = total_bad + t:get("bad")
    total_sent = total_sent + t:get("counter")
  end
  io.write(string.format("ACKED %d\nBAD %d\nGENERATED %d\n", total_acked, total_bad, total_sent))
end
