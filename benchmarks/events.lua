-- wrk script: POST unique page_view events (unique event_id per request, current time).
local counter = 0
local thread_id = 0
function setup(thread)
  thread:set("tid", thread_id)
  thread_id = thread_id + 1
end
function init(args)
  math.randomseed(os.time() + tid * 7919)
  prefix = string.format("%08x", math.random(0, 0x7fffffff))
end
request = function()
  counter = counter + 1
  local id = string.format("%s-%04x-4%03x-8%03x-%012x", prefix, tid % 65536, counter % 4096,
    math.random(0, 4095), counter)
  local ts = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local body = string.format(
    '{"event_id":"%s","user_id":"u%d","timestamp":"%s","event_type":"page_view","payload":{"page_url":"https://example.com/p%d"}}',
    id, math.random(1, 10000), ts, math.random(1, 50))
  return wrk.format("POST", "/events", {["Content-Type"] = "application/json"}, body)
end
