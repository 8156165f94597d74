"""`aigwctl --url URL --token TOKEN [--json] COMMAND`: read the gateway's state over its admin API.

Exit codes: 0 success, 1 the command failed, 2 usage error, 3 the daemon is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

COMMANDS: dict[str, tuple[str, str]] = {
    "health": ("/health", "gateway health"),
    "models": ("/admin/models", "state of every model server"),
    "queue": ("/admin/queue/{model}", "queue metrics of one model (argument: model)"),
    "crashes": ("/admin/crashes?limit={limit}", "newest crash records"),
    "missing": ("/admin/missing-models?limit={limit}", "newest requests for models not served"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aigwctl", description="Admin client for aigwd.",
        epilog="Exit codes: 0 success, 1 command failed, 2 usage error, 3 daemon unreachable.\n"
               "Commands: " + "; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("AIGW_URL", "http://127.0.0.1:8080"),
                   help="gateway URL (env AIGW_URL)")
    p.add_argument("--token", default=os.environ.get("AIGW_TOKEN", ""), help="admin access token (env AIGW_TOKEN)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("model", nargs="?")
    return p


def render(data: Any) -> str:
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        rows = list(data.values())
    elif isinstance(data, list):
        rows = data
    else:
        return "\n".join(f"{k:<18} {v}" for k, v in data.items()) if isinstance(data, dict) else str(data)
    if not rows:
        return "(none)"
    keys = [k for k in rows[0] if not isinstance(rows[0][k], dict | list) and k != "stack_trace"]
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.upper().ljust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path = COMMANDS[args.command][0]
    if "{model}" in path and not args.model:
        print(f"aigwctl: {args.command} needs a model name", file=sys.stderr)
        return EXIT_USAGE
    url = args.url.rstrip("/") + path.format(model=args.model or "", limit=args.limit)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {args.token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except ValueError:
            detail = exc.reason
        print(f"aigwctl: {exc.code}: {detail}", file=sys.stderr)
        return EXIT_FAILED
    except (urllib.error.URLError, OSError) as exc:
        print(f"aigwctl: cannot reach {args.url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(data, indent=2) if args.json else render(data))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
