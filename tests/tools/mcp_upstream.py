#!/usr/bin/env python3
"""A small upstream MCP server (the official Python SDK's FastMCP) that the
tests put behind Mandate's gateway: a key-value store of notes.

Usage:
    mcp_upstream.py --log FILE stdio     # MCP on stdin/stdout
    mcp_upstream.py --log FILE http      # streamable HTTP on a free loopback
                                         # port; prints {"port": N} first, then
                                         # each log line

Tools: notes_put(key, value), notes_delete(key), notes_get(key),
notes_wipe(), notes_slow_put(key, value, ms) (sleeps, then puts). Every call
appends one JSON line to FILE as it starts ({"tool", "args", "key",
"compensates", "event": "start"}), and writes run without applying twice
under one idempotency key (the `mandate/idempotency_key` of the call's
_meta): a repeat returns the first result and is logged with "event":
"repeat"; an applied write is logged with "event": "applied". The log
survives the server, so the tests can count what ran. Standard library and
`mcp` only.
"""

import argparse
import asyncio
import json
import os
import socket
import sys

from mcp.server.fastmcp import Context, FastMCP

args = None
notes = {}
done = {}  # idempotency key -> the result of the write applied under it

server = FastMCP("notes", log_level="WARNING")


def log(**fields):
    with open(args.log, "a", encoding="utf-8") as f:
        f.write(json.dumps(fields) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if args.transport == "http":
        # The test waits on these lines (stdout is the protocol on stdio).
        print(json.dumps(fields), flush=True)


def meta_of(ctx):
    meta = ctx.request_context.meta
    extra = (getattr(meta, "model_extra", None) or {}) if meta is not None else {}
    return extra.get("mandate/idempotency_key"), extra.get("mandate/compensates")


def start(tool, ctx, **a):
    key, compensates = meta_of(ctx)
    log(tool=tool, args=a, key=key, compensates=compensates, event="start")
    return key


def once(tool, key, apply):
    if key is not None and key in done:
        log(tool=tool, key=key, event="repeat")
        return done[key]
    result = apply()
    if key is not None:
        done[key] = result
    log(tool=tool, key=key, event="applied", result=result)
    return result


@server.tool()
def notes_put(key: str, value: str, ctx: Context) -> dict:
    """Set a note."""
    k = start("notes_put", ctx, key=key, value=value)

    def apply():
        previous = notes.get(key)
        notes[key] = value
        return {"key": key, "value": value, "previous": previous}

    return once("notes_put", k, apply)


locks = {}  # idempotency key -> held while a call under it is under way


@server.tool()
async def notes_slow_put(key: str, value: str, ms: int, ctx: Context) -> dict:
    """Set a note after sleeping ms milliseconds."""
    k = start("notes_slow_put", ctx, key=key, value=value, ms=ms)

    def apply():
        notes[key] = value
        return {"key": key, "value": value}

    # A second call under the key while the first sleeps waits for it (and
    # applies itself only if the first was cancelled before applying).
    async with locks.setdefault(k, asyncio.Lock()):
        if k is None or k not in done:
            await asyncio.sleep(ms / 1000)
        return once("notes_slow_put", k, apply)


@server.tool()
def notes_delete(key: str, ctx: Context) -> dict:
    """Remove a note."""
    k = start("notes_delete", ctx, key=key)
    return once("notes_delete", k, lambda: {"key": key, "removed": notes.pop(key, None)})


@server.tool()
def notes_get(key: str, ctx: Context) -> dict:
    """Read a note."""
    start("notes_get", ctx, key=key)
    return {"key": key, "value": notes.get(key)}


@server.tool()
def notes_wipe(ctx: Context) -> dict:
    """Remove every note."""
    k = start("notes_wipe", ctx)

    def apply():
        n = len(notes)
        notes.clear()
        return {"removed": n}

    return once("notes_wipe", k, apply)


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("transport", choices=["stdio", "http"])
    args = p.parse_args()
    if args.transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    sys.exit(main())
