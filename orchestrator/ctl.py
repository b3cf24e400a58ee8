"""`dynamo-ctl`: talk to a running `dynamo-launch` through its control socket.

    dynamo-ctl status [--json]      every process: state, pid, GPUs, ports, restarts
    dynamo-ctl restart GROUP|all    rolling restart, one replica at a time
    dynamo-ctl scale GROUP=N        add replicas on free GPUs, or drain the last ones
    dynamo-ctl stop                 drain and stop, as SIGTERM does

The deployment is the one whose run dir `--run-dir` names (or DYN_RUN_DIR); by default
the newest one under ./outputs that is running.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.supervisor.control import SOCKET_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dynamo-ctl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default=os.environ.get("DYN_RUN_DIR"), help="the deployment's run dir [DYN_RUN_DIR]")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="every process of the deployment")
    status.add_argument("--json", action="store_true", help="as JSON")
    restart = commands.add_parser("restart", help="rolling restart of a worker group")
    restart.add_argument("group", help="a worker group, or all")
    scale = commands.add_parser("scale", help="change a worker group's replica count")
    scale.add_argument("target", metavar="GROUP=N")
    commands.add_parser("stop", help="drain and stop the deployment")
    args = parser.parse_args(argv)

    sock = _socket_path(args.run_dir)
    if sock is None:
        print("dynamo-ctl: no running deployment found (hint: pass --run-dir, the run dir dynamo-launch printed)",
              file=sys.stderr)
        return 2
    request = {"command": args.command}
    if args.command == "restart":
        request["group"] = args.group
    elif args.command == "scale":
        group, _, count = args.target.partition("=")
        if not count.isdigit():
            print(f"dynamo-ctl: {args.target!r} is not GROUP=N (hint: dynamo-ctl scale agg=3)", file=sys.stderr)
            return 2
        request |= {"group": group, "replicas": int(count)}
    reply = _ask(sock, request)
    if not reply.get("ok"):
        print(f"dynamo-ctl: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.command == "status" and not args.json:
        _print_status(reply)
    elif args.command == "status":
        print(json.dumps(reply))
    else:
        print(reply["message"])
    return 0


def _socket_path(run_dir: str | None) -> Path | None:
    if run_dir:
        path = Path(run_dir) / SOCKET_NAME
        return path if path.exists() else None
    candidates = sorted(Path("outputs").glob(f"*/*/{SOCKET_NAME}"), key=lambda p: p.stat().st_mtime, reverse=True)
    return candidates[0] if candidates else None


def _ask(path: Path, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return {"ok": False, "error": f"the deployment behind {path} is not running"}
        conn.sendall(json.dumps(request).encode() + b"\n")
        with conn.makefile("rb") as replies:
            return json.loads(replies.readline())


def _print_status(reply: dict) -> None:
    table = Table(title=f"{reply['model']} at {reply['url']}", title_justify="left")
    for column in ("process", "state", "pid", "GPUs", "ports", "restarts", "for"):
        table.add_column(column)
    for p in reply["processes"]:
        table.add_row(p["name"], p["state"], str(p["pid"] or "-"), ",".join(map(str, p["gpus"])) or "-",
                      " ".join(f"{k}={v}" for k, v in p["ports"].items()), str(p["restarts"]), f"{p['since_s']}s")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
