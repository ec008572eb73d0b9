"""A real MCP server for the SDK suite: the official Python SDK's FastMCP.

    python3 mcp_server.py TRANSPORT PORT_FILE

TRANSPORT is "streamable-http" (served at /mcp) or "sse" (the legacy
HTTP+SSE transport, at /sse). The port is written to PORT_FILE once
chosen. Tools:
- add(a, b): the sum;
- shout(text): the text in capitals;
- fail(reason): always fails (the tool reports an error);
- headers(): which headers the request carried (x-team, and whether any
  header holds a gateway key).
"""

import json
import socket
import sys

from mcp.server.fastmcp import Context, FastMCP


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


transport, port_file = sys.argv[1], sys.argv[2]
port = free_port()
server = FastMCP("sdk-suite-tools", host="127.0.0.1", port=port, log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """Returns the text in capitals."""
    return text.upper()


@server.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ValueError(f"failed on purpose: {reason}")


@server.tool()
def headers(ctx: Context) -> str:
    """Reports the request headers the server saw."""
    request = ctx.request_context.request
    seen = dict(request.headers) if request is not None else {}
    return json.dumps(
        {
            "x-team": seen.get("x-team"),
            "authorization": seen.get("authorization"),
            "gateway_key_seen": any("sk-mume-" in v for v in seen.values()),
        }
    )


with open(port_file + ".tmp", "w") as f:
    f.write(str(port))
import os  # noqa: E402

os.replace(port_file + ".tmp", port_file)
server.run(transport=transport)
