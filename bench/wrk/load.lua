-- wrk script for bench/load.py: with $BODIES set, POST each line of that file (one JSON body per line)
-- to the URL's path in turn; without it, GET the path. $API_KEY, when set, goes in X-API-Key. Prints a JSON summary when done: requests,
-- seconds, socket errors, non-2xx answers and latency percentiles in microseconds.
local bodies = {}
local file = os.getenv("BODIES")
if file then
  for line in io.lines(file) do bodies[#bodies + 1] = line end
end
local headers = { ["Content-Type"] = "application/json" }
if os.getenv("API_KEY") then headers["X-API-Key"] = os.getenv("API_KEY") end
local i = 0

if #bodies > 0 then
  request = function()
    i = i % #bodies + 1
    return wrk.format("POST", nil, headers, bodies[i])
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SUMMARY {"requests": %d, "seconds": %f, "errors": %d, "status_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
