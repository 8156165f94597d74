"""`aigwd --config FILE [--listen HOST:PORT] [--state-dir DIR] [--control-socket PATH]`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from . import __version__, config, logs

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aigwd", description="aigw gateway daemon: authenticates, rate-limits and queues chat and OCR "
                                  "requests, and supervises the model servers that answer them.",
        epilog="Exit codes: 0 stopped cleanly, 1 failed at run time, 2 bad configuration or usage.")
    p.add_argument("--config", help="TOML configuration file (see etc/aigw/aigw.toml)")
    p.add_argument("--listen", help="override server.listen, HOST:PORT")
    p.add_argument("--state-dir", help="override server.state_dir")
    p.add_argument("--control-socket", help="override server.control_socket")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--check", action="store_true",
                   help="check the configuration and the store (connecting to PostgreSQL), and exit")
    p.add_argument("--print-settings", action="store_true", help="print every setting with its help")
    p.add_argument("--hash-password", action="store_true",
                   help="read a password from the terminal (or stdin) and print its hash for users.password_hash")
    p.add_argument("--version", action="version", version=f"aigwd {__version__}")
    return p


def _hash_password() -> int:
    from .auth.passwords import hash_password

    password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        print("aigwd: empty password", file=sys.stderr)
        return EXIT_CONFIG
    print(hash_password(password))
    return EXIT_OK


def _check_store(cfg: config.Config) -> int:
    """Say which host this is and what its store holds; connects to PostgreSQL but changes nothing."""
    from .storeconfig import node_name

    print(f"node: {node_name(cfg.fleet)}")
    if not cfg.store.url:
        print(f"store: SQLite in {cfg.state_dir}")
        return EXIT_OK
    from .fleet.forward import FleetSecretError, fleet_secret
    from .store import StoreError
    from .store.postgres import SCHEMA_VERSION, PgTarget, probe

    try:
        print("fleet secret: " + ("read" if fleet_secret(cfg.fleet.secret_file) else
                                  "none ([fleet] secret_file is empty: admin actions cannot name other hosts)"))
    except FleetSecretError as exc:
        print(f"aigwd: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    target = PgTarget(cfg.store.url, cfg.store.password_file, cfg.store.connect_timeout_s,
                      statement_timeout_s=cfg.store.statement_timeout_s)
    try:
        found = asyncio.run(probe(target))
    except StoreError as exc:
        print(f"aigwd: store: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"store: PostgreSQL {found.server_version} at {target.where}")
    problem = found.problem()
    if problem:
        print(f"aigwd: store: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    if found.schema_version is None:
        print(f"schema: none yet (empty database); version {SCHEMA_VERSION} is created at start")
    elif found.schema_version < SCHEMA_VERSION:
        print(f"schema: version {found.schema_version}; migrated to {SCHEMA_VERSION} at start")
    else:
        print(f"schema: version {found.schema_version} (current)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.print_settings:
        print(config.describe())
        return EXIT_OK
    if args.hash_password:
        return _hash_password()
    if not args.config:
        print("aigwd: --config FILE is required", file=sys.stderr)
        return EXIT_CONFIG
    overrides = {k: v for k, v in (("listen", args.listen), ("state_dir", args.state_dir),
                                   ("control_socket", args.control_socket)) if v is not None}
    try:
        cfg = config.load(args.config, overrides)
    except config.ConfigError as exc:
        print(f"aigwd: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(f"{cfg.path}: configuration is valid")
        return _check_store(cfg)
    logs.setup(args.log_level)
    from .daemon import Daemon, StartupError

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(Daemon(cfg).run())
    except StartupError as exc:
        logs.event("startup_failed", reason=str(exc))
        print(f"aigwd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
