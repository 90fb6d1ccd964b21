#!/usr/bin/env python3
"""An MCP client built on the official Python SDK (`mcp` from PyPI) that walks
Mandate's MCP gateway the way an agent's client would.

Usage (the agent's token in MANDATE_TOKEN):
    mcp_client.py --tag T http URL                 # streamable HTTP, bearer token
    mcp_client.py --tag T stdio BIN ARG...         # spawns BIN ARG... (`mandate mcp`)

It lists the tools, calls an allowed write (kv.put, then ledger.charge), a
denied one (kv.delete), a gated one (ledger.charge above 1000, with a progress
token: it waits) and mandate_rollback. Each result is printed on stdout as
one JSON line {"step", ...}; while the gated call waits, the first progress
notification is printed as {"step": "gated_waiting", "message"} so that the
driver (cli/tests/mcp_python.rs) can approve it. Keys and accounts carry
the tag, so several runs share a database. Standard library and `mcp` only.
"""

import argparse
import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def result(step, r):
    text = "\n".join(c.text for c in r.content if getattr(c, "type", None) == "text")
    emit(step, is_error=bool(r.isError), text=text, structured=r.structuredContent)


async def walk(session, tag):
    await session.initialize()
    tools = await session.list_tools()
    emit("tools", names=[t.name for t in tools.tools])

    key, account = f"py-{tag}", f"py-{tag}"
    result("put", await session.call_tool("kv.put", {"key": key, "value": "v1"}))
    result(
        "charge",
        await session.call_tool("ledger.charge", {"account": account, "amount_cents": 500}),
    )
    result("denied", await session.call_tool("kv.delete", {"key": key}))

    waiting = asyncio.Event()

    async def progress(value, total, message):
        if not waiting.is_set():
            waiting.set()
            emit("gated_waiting", progress=value, message=message)

    # The progress callback makes the SDK send a progress token.
    result(
        "gated",
        await session.call_tool(
            "ledger.charge",
            {"account": account, "amount_cents": 5000},
            progress_callback=progress,
        ),
    )
    result("status", await session.call_tool("mandate_status", {}))
    result("rollback", await session.call_tool("mandate_rollback", {"reason": f"python {tag}"}))
    emit("done")


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tag", required=True)
    sub = p.add_subparsers(dest="transport", required=True)
    h = sub.add_parser("http")
    h.add_argument("url")
    s = sub.add_parser("stdio")
    s.add_argument("command")
    s.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    token = os.environ.get("MANDATE_TOKEN")
    if not token:
        sys.exit("MANDATE_TOKEN must hold an agent token")

    if a.transport == "http":
        headers = {"Authorization": f"Bearer {token}"}
        async with streamablehttp_client(a.url, headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                await walk(session, a.tag)
    else:
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        server = StdioServerParameters(command=a.command, args=a.args, env=env)
        async with stdio_client(server) as (read, write):
            async with ClientSession(read, write) as session:
                await walk(session, a.tag)


if __name__ == "__main__":
    asyncio.run(main())
