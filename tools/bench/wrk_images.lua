-- wrk script: POST /predict with real image files, one after another (each connection
-- cycles through all of them), as a raw body or as the seed's multipart field `file`.
--   wrk -t1 -c8 -d30s --timeout 60s -s tools/bench/wrk_images.lua URL -- raw|multipart F1 [F2 ...]
-- done() prints one JSON line (latencies in microseconds) that tools/bench/http_bench.py reads.

local requests_ = {}
local next_ = 1
local thread_counter = 0

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("thread_id", thread_counter)
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  local mode = args[1]
  assert(mode == "raw" or mode == "multipart", "first script argument: raw or multipart")
  assert(#args >= 2, "no image files given")
  local boundary = "----wrkbenchboundary7f3a9c2e"
  for i = 2, #args do
    local path = args[i]
    local name = path:match("([^/]+)$")
    local data = read_file(path)
    local req
    if mode == "raw" then
      req = wrk.format("POST", "/predict", { ["Content-Type"] = "image/jpeg" }, data)
    else
      local body = "--" .. boundary .. "\r\n"
        .. 'Content-Disposition: form-data; name="file"; filename="' .. name .. '"\r\n'
        .. "Content-Type: image/jpeg\r\n\r\n"
        .. data .. "\r\n--" .. boundary .. "--\r\n"
      req = wrk.format("POST", "/predict",
        { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }, body)
    end
    requests_[#requests_ + 1] = req
  end
  -- Threads start at different images so that, with several threads, the mix stays even.
  next_ = ((tonumber(thread_id) or 1) - 1) % #requests_ + 1
end

function request()
  local r = requests_[next_]
  next_ = next_ % #requests_ + 1
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"wrk_requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,'
      .. '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.mean, latency.max))
end
