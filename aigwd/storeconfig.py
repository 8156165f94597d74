"""The [store] and [fleet] settings: where the daemon keeps its state, and what this host is called.

Kept apart from config.py, which holds the other sections, and loaded by it like them.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .configfields import opt, opt_factory, positive

SCHEMES = ("postgresql", "postgres")
# Query options a [store] url may carry: TLS to the database (asyncpg reads them from the URL).
URL_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def url_problem(url: str) -> str | None:
    """What is wrong with a [store] url, or None; checked when the config file is loaded."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a URL ({exc}); the form is postgresql://USER@HOST:PORT/DB"
    if parts.scheme not in SCHEMES:
        return "must start with postgresql:// (the form is postgresql://USER@HOST:PORT/DB)"
    if not parts.hostname:
        return "names no host; the form is postgresql://USER@HOST:PORT/DB"
    if not parts.username:
        return "names no user; the form is postgresql://USER@HOST:PORT/DB"
    if not parts.path.strip("/"):
        return "names no database; the form is postgresql://USER@HOST:PORT/DB"
    if port is not None and not 1 <= port <= 65535:
        return "port must be 1-65535"
    if parts.fragment:
        return "takes no #fragment"
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if key not in URL_OPTIONS:
            return f"takes no ?{key}=; the options it takes are {', '.join(URL_OPTIONS)}"
        if key == "sslmode" and values[-1] not in SSLMODES:
            return f"sslmode must be one of {', '.join(SSLMODES)}"
    return None


def fleet_problem(fleet: FleetConfig) -> str | None:
    if fleet.lost_after_s < 2 * fleet.heartbeat_s:
        return (f"lost_after_s ({fleet.lost_after_s:g}) must be at least twice heartbeat_s ({fleet.heartbeat_s:g}), "
                "or one late heartbeat shows a live host as lost")
    return None


def _url(v: Any) -> str | None:
    if v == "":
        return None
    problem = url_problem(v)
    return None if problem is None else f"{problem} (got {_redacted(v)!r})"


def _redacted(url: str) -> str:
    """A URL as messages may show it: any password replaced."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)[:200]


def _node(v: Any) -> str | None:
    return None if v == "" or NODE_RE.match(v) else "must be 1-64 characters of letters, digits, '.', '_' or '-'"


def _readers(v: Any) -> str | None:
    return None if 1 <= v <= 64 else "must be between 1 and 64"


@dataclass
class StoreConfig:
    url: str = opt("", "PostgreSQL database the daemon keeps its state in, postgresql://USER@HOST:PORT/DB: the "
                        "base of running several hosts on one database. Empty: SQLite in server.state_dir. Keep "
                        "the password out of the URL: use password_file.", _url)
    password_file: str = opt("", "File holding the PostgreSQL password (readable by the daemon only); read at "
                                  "start. Empty: the URL's password, or none (trust, peer or .pgpass).")
    connect_timeout_s: float = opt(10.0, "How long connecting to PostgreSQL may take before the start fails.",
                                    lambda v: None if v > 0 else "must be greater than 0")
    statement_timeout_s: float = opt(5.0, "Longest one PostgreSQL statement (or the wait for a reader connection) "
                                          "may take; past it the connection counts as lost: requests that need "
                                          "the database get 503 and the writer reconnects with back-off, instead "
                                          "of every write waiting on a server that stopped answering. A "
                                          "request's body is sent in one statement: allow for the largest.",
                                      lambda v: None if 0 < v <= 3600 else "must be greater than 0 and at most 3600")
    readers: int = opt(4, "PostgreSQL connections for reads (writes use one more, batched).", _readers)
    synchronous_commit: bool = opt(True, "true: a write returns once PostgreSQL has flushed it to disk. false: "
                                         "once it is committed, the flush following within a fraction of a "
                                         "second (PostgreSQL's synchronous_commit = off, the level of the SQLite "
                                         "store's WAL): a crash of aigwd or of PostgreSQL loses nothing, a power "
                                         "cut of the database host may lose the last commits; each request's "
                                         "path is several milliseconds faster on slow disks.")


def _address(v: Any) -> str | None:
    if v == "":
        return None
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"is not a URL ({exc}); the form is http://HOST:PORT"
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
        return "must be http://HOST:PORT or https://HOST:PORT, nothing after the port"
    return None


def _lease(v: Any) -> str | None:
    return None if 1 <= v <= 300 else "must be between 1 and 300 seconds"


def _poll(v: Any) -> str | None:
    return None if 0.1 <= v <= 60 else "must be between 0.1 and 60 seconds"


def _serve(v: Any) -> str | None:
    if len(v) > 256:
        return "may list at most 256 backends"
    return None if all(n == "*" or NODE_RE.match(n) for n in v) else "must list backend names, or \"*\" for all"


@dataclass
class FleetConfig:
    node: str = opt("", "This host's name among the hosts that share [store] url. Empty: the host name.", _node)
    address: str = opt("", "URL the other hosts reach this host's API at, http://HOST:PORT (or https:// behind a "
                           "TLS proxy); shown in /admin/fleet and used to forward admin actions that name this "
                           "host. Empty: server.listen, with the host name when it listens on every address.",
                        _address)
    secret_file: str = opt("", "File holding the secret hosts present to each other when one forwards an admin "
                               "action to another or relays a /v1 request for a model it does not serve (the "
                               "same file on every host, readable by the daemon only, at least 32 characters). "
                               "Empty: actions naming another host are refused, /v1 requests for a model not "
                               "served here answer 503, and calls from other hosts are refused.")
    ca_file: str = opt("", "CA certificates to trust for https:// addresses of other hosts. Empty: the system's.")
    heartbeat_s: float = opt(1.0, "How often this host writes its row in the fleet's registry.", positive)
    lost_after_s: float = opt(5.0, "A host whose last heartbeat is older than this is shown as lost, and its node "
                                   "name may be taken by another host. At least twice heartbeat_s.", positive)
    lease_s: float = opt(5.0, "With [store] url: a request a host runs is leased to it for this long and renewed "
                              "while it runs; a host that dies stops renewing, and its requests run elsewhere "
                              "once the lease has run out.", _lease)
    serve: list[str] = opt_factory(lambda: ["*"], "With [store] url: the backends whose model servers this host "
                                   "runs and takes queued work for; \"*\": all configured. The others are only "
                                   "accepted here and run by the hosts that serve them; [] serves none.", _serve)
    poll_s: float = opt(2.0, "With [store] url: how often a host looks for queued work and finished requests "
                             "when no notification came (notifications wake it at once; this is the safety net).",
                        _poll)

    def serves(self, backend: str) -> bool:
        return "*" in self.serve or backend in self.serve


def node_name(fleet: FleetConfig) -> str:
    return fleet.node or socket.gethostname()


def serve_problem(fleet: FleetConfig, backends: list[str]) -> str | None:
    """[fleet] serve must name configured backends."""
    unknown = [n for n in fleet.serve if n != "*" and n not in backends]
    if unknown:
        return f"serve names {', '.join(unknown)}, not configured in [backends]; known: {', '.join(backends) or 'none'}"
    return None


def store_problem(store: StoreConfig) -> str | None:
    """A check across [store]'s keys, after each key passed its own."""
    if store.password_file and not store.url:
        return "password_file is set but url is empty: it is only used with a PostgreSQL url"
    if store.password_file and re.search(r"://[^:/@]*:[^@]*@", store.url):
        return "url holds a password and password_file is set: keep only password_file"
    return None
