-- wrk script: POST unique events to /events (or batches to /events/batch).
-- Arguments after "--": <timestamp> <id prefix (8 hex)> <batch size, 0 = single events>.
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
  counter = 0
  acked = 0      -- responses meaning "stored": 201, or 200 for a batch
  bad = 0
  path = batch > 0 and "/events/batch" or "/events"
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
  if batch > 0 then
    local parts = {}
    for i = 1, batch do parts[i] = one() end
    body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  else
    body = one()
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

response = function(status, headers, body)
  if status == 201 or (batch > 0 and status == 200) then
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
