"""What the bench runs: upstreams (nginx with canned JSON, the stand-in), and the targets in front of
them (aigw, nginx as reverse proxy, the bare aiohttp proxy, LiteLLM), each on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Proc, Procs, free_port, wait_http

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
USER, PASSWORD = "bench", "bench-password"

# What the canned upstream answers: a small, complete OpenAI chat completion.
CANNED = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "logprobs": None,
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 6, "completion_tokens": 1, "total_tokens": 7}}

# A server process the daemon supervises while the real upstream is run by the bench (pinned to the
# load cores and shared by every target). The daemon sees it ready as soon as the port answers.
PLACEHOLDER = ["{python}", "-c", "import signal; signal.pause()"]


def nginx_available() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def nginx_version() -> str:
    exe = nginx_available()
    if exe is None:
        return "missing"
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().replace("nginx version: ", "")


def _nginx_conf(prefix: Path, servers: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  client_max_body_size 64m;
{servers}
}}
"""


def start_nginx(procs: Procs, name: str, workdir: Path, servers: str, cores: list[int]) -> Proc:
    exe = nginx_available()
    if exe is None:
        raise RuntimeError("nginx is not installed")
    prefix = workdir / name
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_nginx_conf(prefix, servers))
    return procs.start(name, [exe, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], cores=cores,
                       stop_timeout=5)


def canned_nginx_servers(port: int) -> str:
    body = json.dumps(CANNED).replace("'", "\\'")
    return f"""  server {{
    listen {HOST}:{port} reuseport backlog=4096;
    location = /health {{ return 200; }}
    location = /v1/chat/completions {{ default_type application/json; return 200 '{body}'; }}
    location / {{ return 404; }}
  }}"""


def proxy_nginx_servers(port: int, routes: dict[str, int]) -> str:
    """nginx as reverse proxy, one worker, upstream keep-alive, no buffering (SSE passes at once)."""
    ups, locs = [], []
    for i, (prefix, up_port) in enumerate(sorted(routes.items())):
        ups.append(f"  upstream up{i} {{ server {HOST}:{up_port}; keepalive 256; }}")
        locs.append(f"""    location {prefix} {{
      proxy_pass http://up{i}/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }}""")
    return "\n".join(ups) + f"""
  server {{
    listen {HOST}:{port} backlog=4096;
{chr(10).join(locs)}
  }}"""


def start_standin(procs: Procs, name: str, model: str, cores: list[int], *args: str) -> tuple[Proc, int]:
    port = free_port()
    proc = procs.start(name, [sys.executable, "-m", "aigwd.standin", "--host", HOST, "--port", str(port),
                              "--model", model, *args], cores=cores, cwd=REPO, stop_timeout=5)
    return proc, port


def hash_password(password: str) -> str:
    out = subprocess.run([sys.executable, "-m", "aigwd", "--hash-password"], input=password + "\n",
                         capture_output=True, text=True, cwd=REPO, check=True, timeout=60)
    return out.stdout.strip().splitlines()[-1]


@dataclass
class Backend:
    name: str
    model: str
    port: int
    kind: str = "chat"
    extra: dict[str, object] = field(default_factory=dict)


def toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


def socket_dir() -> Path:
    """A short directory for Unix sockets: their paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="aigwb-"))


def aigw_config(directory: Path, port: int, password_hash: str, backends: list[Backend], *,
                aging_s: float = 60.0, max_waiting: int = 10000, limited_client: bool = True,
                sockets: Path | None = None) -> Path:
    """The full path as production runs it, with limits set high so only the bench decides the load."""
    control = (sockets / f"{directory.name}.sock") if sockets else directory / "control.sock"
    lines = [
        "[server]", f'listen = "{HOST}:{port}"', f'state_dir = "{directory / "state"}"',
        f'control_socket = "{control}"', "shutdown_grace_s = 1",
        "[auth]", "access_ttl_s = 86400",
        "[gpu]", "enabled = false",
        "[rate_limit]", "per_minute = 1000000000.0", "burst = 1000000",
        # The bench's load comes from one user: its subject may take the whole rate and the whole queue.
        "subject_per_minute = 1000000000.0", "subject_burst = 1000000",
    ]
    if limited_client:  # for the 429 figure
        lines += ["[rate_limit.clients.limited]", "per_minute = 1.0", "burst = 1"]
    lines += ["[queue]", "max_concurrent = 256", f"max_waiting = {max_waiting}", "timeout_s = 120",
              "subject_share = 1.0",
              f"aging_s = {float(aging_s)}", "max_poll_wait_s = 60",
              "[[users]]", f'name = "{USER}"', 'role = "user"', f'password_hash = "{password_hash}"']
    for b in backends:
        lines += [f"[backends.{b.name}]", f'kind = "{b.kind}"', f"models = {toml([b.model])}",
                  f"port = {b.port}", f"command = {toml(PLACEHOLDER)}", "startup_timeout_s = 30",
                  "stop_grace_s = 2", "health_interval_s = 30"]
        lines += [f"{k} = {toml(v)}" for k, v in b.extra.items()]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "aigw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_aigw(procs: Procs, name: str, config: Path, cores: list[int], *, env: dict[str, str] | None = None,
               log_level: str = "info") -> Proc:
    return procs.start(name, [sys.executable, "-m", "aigwd", "--config", str(config), "--log-level", log_level],
                       cores=cores, cwd=REPO, env={"PYTHONUNBUFFERED": "1", **(env or {})}, stop_timeout=20)


def wait_aigw_healthy(proc: Proc, port: int, timeout: float = 30.0) -> None:
    wait_http(f"http://{HOST}:{port}/health", timeout, proc,
              ok=lambda status, body: status == 200 and json.loads(body).get("status") == "healthy")


def login(port: int) -> str:
    import urllib.parse
    import urllib.request

    data = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    with urllib.request.urlopen(f"http://{HOST}:{port}/auth/token", data=data, timeout=30) as resp:
        return str(json.loads(resp.read())["access_token"])


def start_bare(procs: Procs, routes: dict[str, int], cores: list[int]) -> tuple[Proc, int]:
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "bareproxy.py"), "--host", HOST, "--port", str(port)]
    for prefix, up in routes.items():
        argv += ["--route", f"{prefix}=http://{HOST}:{up}"]
    proc = procs.start("bare-proxy", argv, cores=cores, cwd=REPO, stop_timeout=5)
    wait_http(f"http://{HOST}:{port}/health", 30, proc, ok=lambda s, b: s in (200, 404, 405))
    return proc, port


# --- LiteLLM --------------------------------------------------------------------------------------

LITELLM_SPEC = "litellm[proxy]"


def litellm_paths(workdir: Path) -> tuple[Path, Path]:
    venv = workdir / "litellm-venv"
    return venv, venv / "bin" / "litellm"


def litellm_version(workdir: Path) -> str:
    venv, _ = litellm_paths(workdir)
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def install_litellm(workdir: Path, timeout_s: float = 1200) -> str | None:
    """Install litellm[proxy] into its own venv under the work dir; None when done, else why not."""
    venv, exe = litellm_paths(workdir)
    if exe.exists():
        return None
    print(f"bench: installing {LITELLM_SPEC} into {venv} (about 750 MB, once)", flush=True)
    log = workdir / "litellm-install.log"
    try:
        with open(log, "wb") as out:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out,
                           timeout=120)
            subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", LITELLM_SPEC], check=True,
                           stdout=out, stderr=out, timeout=timeout_s)
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        return f"pip install {LITELLM_SPEC} failed ({exc}): {' | '.join(tail)}"
    return None


def start_litellm(procs: Procs, workdir: Path, routes: dict[str, int], cores: list[int],
                  timeout: float = 180.0) -> tuple[Proc, int, str, float]:
    """LiteLLM proxy, one worker, a master key; (proc, port, key, seconds to healthy)."""
    _venv, exe = litellm_paths(workdir)
    port = free_port()
    key = "sk-bench-" + os.urandom(12).hex()
    models = "\n".join(f"""  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://{HOST}:{up}/v1
      api_key: none""" for model, up in routes.items())
    cfg = workdir / "litellm.yaml"
    cfg.write_text(f"""model_list:
{models}
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
  drop_params: true
""")
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
           "DISABLE_SCHEMA_UPDATE": "True", "NO_DOCS": "True", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = procs.start("litellm", [str(exe), "--config", str(cfg), "--host", HOST, "--port", str(port),
                                   "--num_workers", "1"], cores=cores, env=env, cwd=workdir, stop_timeout=10)
    wait_http(f"http://{HOST}:{port}/health/liveliness", timeout, proc)
    return proc, port, key, time.monotonic() - started
