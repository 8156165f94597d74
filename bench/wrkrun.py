"""Closed-loop throughput with wrk: a fixed request, or aigw's two-step flow (POST /api/chat, then
GET /api/requests/{id}?wait=), with the figures read back as JSON from the script's done()."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import taskset

# Shared by both scripts: done() prints one JSON line that the harness parses.
_DONE = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local ok, other, completed = 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + (t:get("ok") or 0)
    other = other + (t:get("other") or 0)
    completed = completed + (t:get("completed") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f, "ok": %d, "other": %d, "completed": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    ok, other, completed))
end
"""

# Args: METHOD PATH BODY_FILE_OR_- HEADER... ; a static request (wrk builds it once).
SIMPLE = r"""
function init(args)
  wrk.method = args[1]
  wrk.path = args[2]
  if args[3] ~= "-" then
    local f = assert(io.open(args[3], "rb")); wrk.body = f:read("*a"); f:close()
  end
  for i = 4, #args do
    local k, v = args[i]:match("^([^:]+):%s*(.*)$")
    wrk.headers[k] = v
  end
end
""" + _DONE

# Args: TOKEN BODY_FILE CLIENTS WAIT. Each thread keeps the request ids it was given; the next free
# connection fetches one of them (GET ?wait=), else submits a new request. Closed loop: at most one
# request per connection in flight, every POST is followed by one GET.
TWO_STEP = r"""
local pending, head, tail = {}, 1, 0
local n = 0
local token, body, clients, wait
ok, other, completed = 0, 0, 0
function init(args)
  token, clients, wait = args[1], tonumber(args[3]), args[4]
  local f = assert(io.open(args[2], "rb")); body = f:read("*a"); f:close()
end
function request()
  n = n + 1
  local hdrs = {["Authorization"] = "Bearer " .. token, ["X-Client-ID"] = "bench" .. (n % clients)}
  if head <= tail then
    local id = pending[head]; pending[head] = nil; head = head + 1
    return wrk.format("GET", "/api/requests/" .. id .. "?wait=" .. wait, hdrs)
  end
  hdrs["Content-Type"] = "application/json"
  return wrk.format("POST", "/api/chat", hdrs, body)
end
function response(status, headers, resp)
  if status == 202 then
    local id = resp:match('"request_id":%s*"([^"]+)"')
    if id then tail = tail + 1; pending[tail] = id; ok = ok + 1 else other = other + 1 end
  elseif status == 200 and resp:find('"status": "completed"', 1, true) then
    completed = completed + 1
  else
    other = other + 1
  end
end
""" + _DONE


def available() -> str | None:
    return shutil.which("wrk")


def version() -> str:
    exe = available()
    if exe is None:
        return "missing"
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "wrk"


@dataclass
class WrkResult:
    command: str
    figures: dict[str, Any]

    @property
    def seconds(self) -> float:
        return float(self.figures["duration_us"]) / 1e6

    @property
    def errors(self) -> int:
        f = self.figures
        return int(f["connect"] + f["read"] + f["write"] + f["status"] + f["timeout"])


def write_scripts(workdir: Path) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    simple, two = workdir / "simple.lua", workdir / "two_step.lua"
    simple.write_text(SIMPLE)
    two.write_text(TWO_STEP)
    return simple, two


def run(url: str, script: Path, args: Sequence[str], *, connections: int, seconds: float,
        cores: Sequence[int], timeout_s: float = 10.0) -> WrkResult:
    exe = available()
    if exe is None:
        raise RuntimeError("wrk is not installed")
    argv = [*taskset(cores), exe, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s:g}s", "-s", str(script), url, "--", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    shown = [a if not a.startswith("eyJ") else "$TOKEN" for a in argv]
    shown = [a if not a.startswith("Authorization: Bearer ") else "Authorization: Bearer $TOKEN" for a in shown]
    return WrkResult(" ".join(shown), json.loads(line[len("WRKJSON "):]))
