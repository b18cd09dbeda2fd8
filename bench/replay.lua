-- wrk script: replays pre-signed Twilio webhooks (one per line: signature TAB body) in order,
-- each once, then writes the run's counts and latency percentiles as JSON to WRK_RESULT.
local requests = {}
local index = 0

function init(args)
  for line in io.lines(os.getenv("WRK_REQUESTS")) do
    local signature, body = line:match("^([^\t]+)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["X-Twilio-Signature"] = signature,
    }, body)
  end
end

function request()
  index = index + 1
  if index > #requests then index = 1 end  -- ran out: repeats (the report says so)
  return requests[index]
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("WRK_RESULT"), "w")
  local points = {}
  for _, p in ipairs({1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9, 100}) do
    points[#points + 1] = string.format('["%s", %d]', tostring(p), latency:percentile(p))
  end
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "mean_us": %f, "max_us": %d, ' ..
    '"percentiles_us": [%s]}',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, table.concat(points, ", ")))
  out:close()
end
