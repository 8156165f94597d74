"""The configuration schema in one place: every setting's name, type, default, check and help.

A config file is TOML. Loading checks every key against the schema below and fails with the file, the
dotted key and what is wrong, before the daemon binds anything.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bounds import MAX_MODEL_NAME, MAX_USERNAME
from .configfields import (
    ConfigError as ConfigError,
)
from .configfields import (
    non_negative,
    number_problem,
    opt,
    opt_factory,
    positive,
    type_ok,
)
from .pdf.settings import PdfConfig
from .storeconfig import FleetConfig, StoreConfig, fleet_problem, serve_problem, store_problem
from .usage.settings import QuotaLimit, QuotasConfig, UsageConfig

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

RESOLUTIONS = ("tiny", "small", "base", "large", "gundam")
BACKEND_KINDS = ("chat", "ocr")
ROLES = ("admin", "user")
MAX_REPLICAS = 64
EXTERNAL_URL_RE = re.compile(r"^http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_USERNAME - 1}}}$")


def _replica_count(v: Any) -> str | None:
    return None if 1 <= v <= MAX_REPLICAS else f"must be between 1 and {MAX_REPLICAS}"


def _gpu_list(v: Any) -> str | None:
    if len(v) > MAX_REPLICAS:
        return f"may list at most {MAX_REPLICAS} GPUs"
    return None if all(g >= 0 for g in v) else "GPU indexes must be 0 or more"


def _external_list(v: Any) -> str | None:
    if len(v) > MAX_REPLICAS:
        return f"may list at most {MAX_REPLICAS} servers"
    for i, entry in enumerate(v):
        if set(entry) != {"url"} or not isinstance(entry["url"], str):
            return f"entry {i} must hold exactly url = \"http://HOST:PORT\""
        if not EXTERNAL_URL_RE.match(entry["url"]):
            return f"entry {i}: url must be http://HOST:PORT (no path), got {entry['url'][:100]!r}"
    return None


def _fraction(v: Any) -> str | None:
    return None if 0 < v <= 1 else "must be a fraction greater than 0 and at most 1, e.g. 0.5"


def _port(v: Any) -> str | None:
    return None if 1 <= v <= 65535 else "must be a port number 1-65535"


def _listen(v: Any) -> str | None:
    try:
        parse_listen(v)
    except ValueError as exc:
        return str(exc)
    return None


def _resolution(v: Any) -> str | None:
    return None if v in RESOLUTIONS else f"must be one of {', '.join(RESOLUTIONS)}"


def _kind(v: Any) -> str | None:
    return None if v in BACKEND_KINDS else f"must be one of {', '.join(BACKEND_KINDS)}"


def _start_mode(v: Any) -> str | None:
    return None if v in ("always", "on-demand", "manual") else "must be one of always, on-demand, manual"


def _policy(v: Any) -> str | None:
    return None if v in ("strict", "serve-current") else "must be one of strict, serve-current"


def _role(v: Any) -> str | None:
    return None if v in ROLES else f"must be one of {', '.join(ROLES)}"


def _name(v: Any) -> str | None:
    return None if NAME_RE.match(v) else "must be 1-64 characters of letters, digits, '.', '_' or '-'"


def _non_empty(v: Any) -> str | None:
    return None if len(v) > 0 else "must not be empty"


def _networks(v: Any) -> str | None:
    for entry in v:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return f"{entry!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)"
    return None


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:8080') -> (host, port)."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"must be HOST:PORT, e.g. 127.0.0.1:8080 (got {value!r})")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"host must be an IP address or localhost (got {host!r})") from None
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535 (got {port})")
    return host, port


@dataclass
class ServerConfig:
    listen: str = opt("127.0.0.1:8080", "Address of the client HTTP API, HOST:PORT.", _listen)
    state_dir: str = opt("/var/lib/aigw", "Directory for the database, spooled bodies, secrets and PID files.",
                          _non_empty)
    control_socket: str = opt("/run/aigw/control.sock", "Path of the local admin control socket.", _non_empty)
    control_group: str = opt("aigw-admin", "Group that owns the control socket (mode 0660): its members may "
                                            "run admin commands. Missing group: the daemon's own group.")
    metrics_listen: str = opt("", "Extra HOST:PORT serving only /metrics without auth (keep it private); "
                                   "empty: /metrics only on the main address, to admin tokens.",
                               lambda v: None if v == "" else _listen(v))
    max_body_mib: float = opt(32.0, "Largest request body accepted, in MiB; larger bodies get 413.", positive)
    max_small_body_kib: float = opt(8.0, "Largest request body, in KiB, on every route but the submissions "
                                          "(/api/chat, /api/ocr, /v1/chat/completions), uploads (/v1/files) "
                                          "and new batches (/v1/batches: 128 KiB): login, refresh, admin, "
                                          "DELETE. Checked before any of the body is read; larger gets 413.",
                                     positive)
    body_read_timeout_s: float = opt(30.0, "A request body not fully received in this many seconds gets 408 "
                                      "and the connection is closed (slow uploads hold no slot).", positive)
    admin_wait_s: float = opt(30.0, "Admin model actions (start, stop, switch) answer when done, or 202 with "
                                      "a way to follow them once they take longer than this.", positive)
    trusted_proxies: list[str] = opt_factory(list, "Addresses or networks of reverse proxies whose "
                                                    "client_address_header is believed, e.g. [\"127.0.0.1\"]. "
                                                    "Empty: the TCP peer is the client address.",
                                              _networks)
    client_address_header: str = opt("", "Header a trusted proxy puts the client address in, e.g. "
                                          "X-Forwarded-For; its right-most entry that is not a trusted proxy is "
                                          "taken. Ignored from peers not in trusted_proxies.")
    shutdown_grace_s: float = opt(10.0, "On stop, how long processing requests may run before they are "
                                         "cut off (they are queued again at the next start).", non_negative)


@dataclass
class AuthConfig:
    secret_file: str = opt("", "File holding the JWT signing secret; created with mode 0600 when missing. "
                                "Empty: <state_dir>/jwt.secret.")
    access_ttl_s: int = opt(900, "Lifetime of an access token, seconds.", positive)
    refresh_ttl_s: int = opt(7 * 86400, "Lifetime of a refresh token, seconds.", positive)
    login_attempts_per_user: int = opt(5, "Password checks one user name gets back to back from one client "
                                           "address; then each further one waits twice as long as the last "
                                           "(1 s, 2 s, ...). A correct password clears the count.", positive)
    login_attempts_per_address: int = opt(30, "Password checks one client address gets back to back, whatever "
                                               "the names (password spraying); correct ones are not counted.",
                                           positive)
    login_checks_in_flight_per_address: int = opt(4, "Password checks from one client address running at "
                                                      "once; more get 429.", positive)
    login_lockout_max_s: float = opt(300.0, "Longest wait a run of failed logins leads to, seconds.", positive)


@dataclass
class UserConfig:
    name: str = opt("", "User name.", _name)
    role: str = opt("user", "admin (everything) or user (client endpoints only).", _role)
    password_hash: str = opt("", "Salted scrypt hash, as written by `aigwd --hash-password`.")
    password: str = opt("", "Plain password, hashed at start. For demos only; production uses password_hash.")


@dataclass
class ClientLimit:
    per_minute: float = opt(60.0, "Requests per minute for this client ID.", positive)
    burst: int = opt(10, "Burst size for this client ID.", positive)


@dataclass
class SubjectLimit:
    per_minute: float = opt(120.0, "Requests per minute for this subject, all its client IDs together.",
                             positive)
    burst: int = opt(20, "Burst size for this subject, all its client IDs together.", positive)


@dataclass
class RateLimitConfig:
    per_minute: float = opt(60.0, "Sustained submissions per minute per (token subject, client ID); with "
                                  "[store] url, across all hosts of the fleet together.", positive)
    burst: int = opt(10, "Submissions allowed at once before the sustained rate applies.", positive)
    clients: dict[str, ClientLimit] = opt_factory(dict, "Overrides by client ID: [rate_limit.clients.ID].")
    subject_per_minute: float = opt(120.0, "Sustained submissions per minute per token subject (a user, or "
                                            "the subject of an API key), all its client IDs together; both "
                                            "this and the per-client bucket must allow.", positive)
    subject_burst: int = opt(20, "Submissions one subject may send at once, all its client IDs together.",
                              positive)
    subjects: dict[str, SubjectLimit] = opt_factory(dict, "Overrides by subject: [rate_limit.subjects.NAME].")


@dataclass
class QueueConfig:
    max_concurrent: int = opt(8, "Requests processed at once per backend (default for backends).", positive)
    max_waiting: int = opt(100, "Requests waiting per backend; one more gets 503.", non_negative)
    timeout_s: float = opt(300.0, "Deadline from acceptance: still queued or processing then -> timeout.",
                            positive)
    aging_s: float = opt(60.0, "A request waiting this long moves up one priority class; 0 disables.",
                          non_negative)
    max_poll_wait_s: float = opt(60.0, "Longest ?wait= a client may ask for on GET /api/requests/{id}.",
                                  positive)
    subject_share: float = opt(0.5, "Fraction of a backend's max_waiting one subject may hold, all its "
                                      "client IDs together; one more gets 503.", _fraction)
    subject_min_waiting: int = opt(1, "A subject may always hold this many waiting requests of a backend, "
                                       "whatever subject_share gives (within max_waiting).", positive)


def _at_least_64k(v: Any) -> str | None:
    return None if v >= 65536 else "must be 65536 (64 KiB) or more"


@dataclass
class ResultsConfig:
    retention_h: float = opt(24.0, "Hours finished requests and their results, and ended batches with "
                                  "their files, are kept.", positive)
    purge_interval_s: float = opt(300.0, "How often expired results are purged.", positive)
    missing_models_max_bytes: int = opt(8 * 1024 * 1024, "Bytes the log of requests for unserved models may "
                                         "hold (newest kept); any client can add to it.", _at_least_64k)


@dataclass
class OcrConfig:
    default_resolution: str = opt("large", "Resolution when a request sends no X-Resolution.", _resolution)
    max_image_pixels: int = opt(40_000_000, "An image whose header declares more pixels (width x height) is "
                                             "refused with 413, before the model server decodes it. DeepSeek-OCR "
                                             "scales every image down to its mode (1280 x 1280 in large; a "
                                             "1024 px view and 640 px tiles in gundam), so more pixels add "
                                             "nothing; 40 megapixels holds an A4 page at 600 dpi (35) and "
                                             "bounds the decoder's memory to about 160 MB.", positive)
    max_image_side: int = opt(16_384, "An image wider or taller than this many pixels is refused with 413 "
                                       "(long receipts fit; WebP's own maximum).", positive)
    policy: str = opt("strict", "strict: a request runs only on a server in its resolution, the server "
                                 "switches mode for waiting demand; serve-current: any mode serves it and "
                                 "the result says which.", _policy)
    min_dwell_s: float = opt(30.0, "strict: stay in a mode at least this long before switching again, "
                                    "even when the running mode is idle.", non_negative)
    max_mismatch_wait_s: float = opt(120.0, "strict: a request of another mode that waited this long "
                                             "asks for a switch whatever the count (after the dwell time).",
                                      positive)
    switch_min_demand: int = opt(2, "strict: requests that must wait for another mode, counted as "
                                     "switch_demand_per_subject at most per subject, before a switch is made "
                                     "for them (or one waits max_mismatch_wait_s).", positive)
    switch_demand_per_subject: int = opt(1, "strict: the most requests of one subject counted as demand for "
                                             "a mode, so one subject's many requests weigh as a few.", positive)
    max_switches_per_hour: int = opt(6, "Mode switches (each a restart of the OCR server) in any 60 "
                                         "minutes, whoever asks: past it the policy and the auto-switch "
                                         "wait; admin switches are still made, and counted.", positive)
    switch_share_per_subject: float = opt(0.5, "strict: the fraction of max_switches_per_hour one subject's "
                                                "requests may cause; past it they no longer count as demand "
                                                "for the rest of the hour.", _fraction)


@dataclass
class BatchConfig:
    max_file_mib: float = opt(100.0, "Largest file accepted on POST /v1/files, MiB (streamed to disk, never held in "
                                      "memory); larger gets 413.", positive)
    max_files_per_subject: int = opt(100, "Files one subject may keep, uploaded and written by its batches (two "
                                           "each); past it uploads and batches get 400 until some are deleted.",
                                      positive)
    max_lines: int = opt(50_000, "Lines (requests) one batch's input file may hold; more fails the batch at "
                                  "validation.", positive)
    max_open_per_subject: int = opt(4, "Batches of one subject not yet ended (validating, in progress, "
                                        "finalizing, cancelling); one more gets 429.", positive)
    max_queued_lines: int = opt(2, "Lines of one batch in the queues at once: the rest are fed in as these "
                                    "finish, so a batch never fills max_waiting.", positive)
    window_s: float = opt(86400.0, "The deadline of a batch's completion_window \"24h\", in seconds (lower only "
                                    "to test expiry); lines not run by then end as expired.", positive)
    upload_timeout_s: float = opt(600.0, "A file upload not received in this many seconds gets 408.", positive)


def _at_least_one(v: Any) -> str | None:
    return None if v >= 1 else "must be 1 or more"


def _divides_day(v: Any) -> str | None:
    return None if v > 0 and 1440 % v == 0 else "must divide a day (1440 minutes), e.g. 15, 30, 60, 120"


@dataclass
class AutoSwitchConfig:
    enabled: bool = opt(False, "Switch the OCR server's resolution mode ahead of demand, from the weekly "
                                "pattern of recorded OCR requests (OCR requests are recorded either way).")
    pattern_window_days: int = opt(7, "Days of recorded OCR requests the weekly pattern is learned from "
                                       "(best a multiple of 7).", positive)
    min_requests_for_switch: int = opt(10, "A slot's most wanted mode needs at least this many requests "
                                            "in the window to switch for it.", positive)
    margin: float = opt(1.5, "Hysteresis: the wanted mode needs at least this many times the running "
                              "mode's requests in the slot.", _at_least_one)
    lead_s: float = opt(120.0, "Switch this long before a slot begins; cover the server's restart time.",
                         non_negative)
    slot_minutes: int = opt(60, "Length of a time slot of the week, in minutes (local time).", _divides_day)
    dry_run: bool = opt(False, "Only record and log what would be switched; never switch.")
    check_interval_s: float = opt(30.0, "How often the plan is checked.", positive)


@dataclass
class GpuConfig:
    enabled: bool = opt(True, "Watch the GPUs through NVML (memory, temperature, ECC, XID events); "
                               "without NVML everything else still works.")
    poll_interval_s: float = opt(5.0, "How often the GPUs are read.", positive)


@dataclass
class BackendConfig:
    name: str = opt("", "Backend name (the table's key).")
    kind: str = opt("chat", "chat or ocr: which client route it serves.", _kind)
    models: list[str] = opt_factory(list, "Model names clients may ask for; the first is sent upstream "
                                           "if the server does not know the alias.", _non_empty)
    command: list[str] = opt_factory(list, "Command line of the server, one argument per item; {host}, "
                                            "{port}, {gpu}, {python}, {state_dir}, {name}, {vllm_guard} (the "
                                            "directory of aigw's vLLM middleware) and {api_key} (the per-start "
                                            "secret, also in $VLLM_API_KEY) are filled in.",
                                      _non_empty)
    host: str = opt("127.0.0.1", "Loopback address the server listens on.")
    port: int = opt(8000, "Port the server listens on.", _port)
    gpu: int = opt(0, "GPU index the server runs on.", non_negative)
    replicas: int = opt(1, "Copies of the server to run, fed from one queue (each with its own "
                            "max_concurrent slots); replica i listens on port + i.", _replica_count)
    gpus: list[int] = opt_factory(list, "GPU of each replica, one entry per replica ({gpu} is filled per "
                                         "replica); empty: every replica on gpu.", _gpu_list)
    external: list[dict[str, Any]] = opt_factory(list, "Servers of this model that aigw does not run: "
                                                        "[[backends.NAME.external]] with url = "
                                                        "\"http://HOST:PORT\". Health-checked and routed to, "
                                                        "never started or stopped.", _external_list)
    env: dict[str, str] = opt_factory(dict, "Extra environment for the server process.")
    extra_body: dict[str, Any] = opt_factory(dict, "Fields merged into every request body sent upstream "
                                                    "(e.g. vllm_xargs for DeepSeek-OCR).")
    startup_timeout_s: float = opt(600.0, "How long the server may take to answer /health with 200.",
                                    positive)
    stop_grace_s: float = opt(30.0, "After SIGTERM, how long before SIGKILL to its process group.",
                               non_negative)
    health_path: str = opt("/health", "Readiness path: 200 means ready.")
    max_concurrent: int = opt(0, "Override of queue.max_concurrent for this backend; 0 = default.",
                               non_negative)
    max_waiting: int = opt(-1, "Override of queue.max_waiting for this backend; -1 = default.")
    resolution: str = opt("large", "OCR backends: the resolution mode the server starts in.", _resolution)
    start: str = opt("always", "always: started with the daemon; on-demand: started by the first request "
                                "and stopped after idle_ttl_s without work; manual: only by an admin.",
                      _start_mode)
    idle_ttl_s: float = opt(600.0, "on-demand backends: stopped after this long without work.", positive)
    health_interval_s: float = opt(5.0, "While running, GET health_path this often.", positive)
    health_timeout_s: float = opt(3.0, "A health check that takes longer has failed.", positive)
    health_failures: int = opt(3, "This many failed health checks in a row: the server is restarted.",
                                positive)
    gpu_memory_mib: int = opt(0, "GPU memory the server needs; a start with less free (per NVML) is "
                                  "refused. 0: no check.", non_negative)
    drain_timeout_s: float = opt(60.0, "A graceful stop waits this long for processing requests.",
                                  non_negative)
    max_start_failures: int = opt(5, "This many failed starts or crashes within failure_window_s: fatal "
                                      "(no more tries until an admin starts it).", positive)
    failure_window_s: float = opt(300.0, "Window for max_start_failures.", positive)
    backoff_initial_s: float = opt(1.0, "First restart delay after a failure; doubles each time.", positive)
    backoff_max_s: float = opt(60.0, "Longest restart delay.", positive)
    requeue_on_crash: bool = opt(False, "Requests processing when the server dies are queued again once "
                                         "instead of failing.")
    max_tokens_limit: int = opt(8192, "A request asking for more than this many answer tokens (max_tokens or "
                                       "max_completion_tokens) is refused with 400. An answer without either "
                                       "is bounded by the server's context (vLLM's --max-model-len): none is "
                                       "filled in, as vLLM refuses a max_tokens that does not fit beside a "
                                       "long prompt. Keep it no higher than the server's context.", positive)
    vllm_priority: bool = opt(False, "The server runs vLLM with --scheduling-policy priority: send the "
                                      "request's class as vLLM's integer priority (high = 0).")
    # A hung engine behind a live API server (vLLM's /health only sees a dead one) shows in deadlines.
    hung_after_timeouts: int = opt(3, "This many requests in a row reach their deadline while processing, "
                                       "none completing between: the server is taken as hung, recorded as a "
                                       "crash and restarted. 0: never.", non_negative)

    @property
    def managed_replicas(self) -> int:
        """Servers aigw runs for this backend: none when it only lists external ones."""
        if not self.command:
            return 0
        return len(self.gpus) if self.gpus else self.replicas

    def replica_ports(self) -> list[int]:
        return [self.port + i for i in range(self.managed_replicas)]

    def replica_gpu(self, index: int) -> int:
        return self.gpus[index] if self.gpus else self.gpu

    @property
    def external_urls(self) -> list[str]:
        return [str(e["url"]) for e in self.external]


@dataclass
class Config:
    path: Path
    server: ServerConfig
    auth: AuthConfig
    users: list[UserConfig]
    rate_limit: RateLimitConfig
    queue: QueueConfig
    results: ResultsConfig
    ocr: OcrConfig
    gpu: GpuConfig
    backends: dict[str, BackendConfig]
    # Server settings given on the command line; a reload applies them again over the file.
    overrides: dict[str, str] = field(default_factory=dict)
    auto_switch: AutoSwitchConfig = field(default_factory=AutoSwitchConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    pdf: PdfConfig = field(default_factory=PdfConfig)
    batches: BatchConfig = field(default_factory=BatchConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)

    @property
    def state_dir(self) -> Path:
        return Path(self.server.state_dir)

    def secret_path(self) -> Path:
        return Path(self.auth.secret_file) if self.auth.secret_file else self.state_dir / "jwt.secret"

    def model_index(self) -> dict[str, str]:
        """Model name -> backend name."""
        return {m: b.name for b in self.backends.values() for m in b.models}


SECTIONS: dict[str, type] = {
    "server": ServerConfig, "auth": AuthConfig, "rate_limit": RateLimitConfig, "queue": QueueConfig,
    "results": ResultsConfig, "ocr": OcrConfig, "gpu": GpuConfig, "auto_switch": AutoSwitchConfig,
    "store": StoreConfig, "fleet": FleetConfig,
    "pdf": PdfConfig,
    "batches": BatchConfig, "usage": UsageConfig, "quotas": QuotasConfig,
}


# Tables of per-name limits inside a section: the class of each entry, and what the names are.
_NESTED_LIMITS: dict[tuple[type, str], tuple[type, str]] = {
    (RateLimitConfig, "clients"): (ClientLimit, "client IDs"),
    (RateLimitConfig, "subjects"): (SubjectLimit, "subjects (user names)"),
    (QuotasConfig, "users"): (QuotaLimit, "user names"),
    (QuotasConfig, "keys"): (QuotaLimit, "API key ids"),
    (QuotasConfig, "clients"): (QuotaLimit, "client IDs"),
}


def _build(cls: type, raw: Any, where: str, fail: Callable[[str, str], ConfigError]) -> Any:
    if not isinstance(raw, dict):
        raise fail(where, "must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        f = known.get(key)
        if f is None or (key == "name" and cls is BackendConfig):
            raise fail(f"{where}.{key}", f"unknown setting; known: {', '.join(sorted(known))}")
        nested = _NESTED_LIMITS.get((cls, key))
        if nested is not None:
            limit_cls, what = nested
            if not isinstance(value, dict):
                raise fail(f"{where}.{key}", f"must be a table of {what}")
            values[key] = {name: _build(limit_cls, v, f"{where}.{key}.{name}", fail) for name, v in value.items()}
            continue
        if not type_ok(value, f.type):
            raise fail(f"{where}.{key}", f"must be of type {f.type}, got {type(value).__name__}")
        if isinstance(value, int) and not isinstance(value, bool) and f.type in ("float", float):
            value = float(value)
        problem = number_problem(value)
        if problem:
            raise fail(f"{where}.{key}", problem)
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise fail(f"{where}.{key}", problem)
        values[key] = value
    return cls(**values)


def load(path: str | Path, overrides: dict[str, str] | None = None) -> Config:
    """Read and check a config file; `overrides` are server settings from the command line."""
    path = Path(path)

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {problem}")

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    allowed = {*SECTIONS, "users", "backends"}
    for key in raw:
        if key not in allowed:
            raise fail(key, f"unknown section; known: {', '.join(sorted(allowed))}")
    sections = {name: _build(cls, raw.get(name, {}), name, fail) for name, cls in SECTIONS.items()}
    server: ServerConfig = sections["server"]
    problem = store_problem(sections["store"])
    if problem:
        raise fail("store", problem)
    problem = fleet_problem(sections["fleet"])
    if problem:
        raise fail("fleet", problem)
    for key, value in (overrides or {}).items():
        problem = dict(listen=_listen, state_dir=_non_empty, control_socket=_non_empty)[key](value)
        if problem:
            raise ConfigError(f"--{key.replace('_', '-')}: {problem}")
        setattr(server, key, value)

    users_raw = raw.get("users", [])
    if not isinstance(users_raw, list):
        raise fail("users", "must be an array of tables: [[users]]")
    users = [_build(UserConfig, u, f"users[{i}]", fail) for i, u in enumerate(users_raw)]
    seen: set[str] = set()
    for i, u in enumerate(users):
        if not u.name:
            raise fail(f"users[{i}].name", "is required")
        if u.name in seen:
            raise fail(f"users[{i}].name", f"user {u.name!r} is defined twice")
        seen.add(u.name)
        if bool(u.password) == bool(u.password_hash):
            raise fail(f"users[{i}]", "set exactly one of password_hash or password")

    backends_raw = raw.get("backends", {})
    if not isinstance(backends_raw, dict):
        raise fail("backends", "must be a table of backends: [backends.NAME]")
    backends: dict[str, BackendConfig] = {}
    owners: dict[str, str] = {}
    ports: dict[int, str] = {}
    for name, b in backends_raw.items():
        where = f"backends.{name}"
        if _name(name):
            raise fail(where, f"backend name {_name(name)}")
        # A backend of servers aigw does not run starts nothing: it needs neither a command nor a port.
        external_only = isinstance(b, dict) and "external" in b and "command" not in b
        for required in ("models",) if external_only else ("command", "models", "port"):
            if isinstance(b, dict) and required not in b:
                raise fail(f"{where}.{required}", "is required")
        backend = _build(BackendConfig, b, where, fail)
        backend.name = name
        if backend.gpus and backend.replicas not in (1, len(backend.gpus)):
            raise fail(f"{where}.gpus", f"lists {len(backend.gpus)} GPUs for {backend.replicas} replicas; give "
                                        "one per replica")
        if backend.port + backend.managed_replicas - 1 > 65535:
            raise fail(f"{where}.replicas", f"replica ports run past 65535 from port {backend.port}")
        for model in backend.models:
            if len(model) > MAX_MODEL_NAME:
                raise fail(f"{where}.models", f"model name {model[:40]!r}... is longer than {MAX_MODEL_NAME} "
                                              "characters, so no client could ask for it")
            if model in owners:
                raise fail(f"{where}.models", f"model {model!r} is already served by {owners[model]}")
            owners[model] = name
        for port in backend.replica_ports():
            if port in ports:
                raise fail(f"{where}.port", f"port {port} is already used by {ports[port]}")
            ports[port] = name
        backends[name] = backend
    problem = serve_problem(sections["fleet"], list(backends))
    if problem:
        raise fail("fleet", problem)
    return Config(path=path, users=users, backends=backends, overrides=dict(overrides or {}), **sections)


def describe() -> str:
    """Every setting with its default and help, for `aigwd --print-settings`."""
    lines = []
    for section, cls in [*SECTIONS.items(), ("users", UserConfig), ("backends.NAME", BackendConfig)]:
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
