"""A tiny MCP server for tests, built with the `mcp` package the Agents SDK depends on.

`python mcp_server.py` serves it over stdio; `http_app()` is the streamable HTTP app (served on
127.0.0.1 by the tests). Its one tool looks up an order; order "boom" makes the tool fail.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

server = MCPServer("orders")


@server.tool()
def lookup_order(order_id: str) -> str:
    """Look up the shipping status of an order by its id."""
    if order_id == "boom":
        raise RuntimeError("the order database is down")
    return f"Order {order_id}: shipped on 2026-11-20 by parcel post"


@server.tool()
def show_env(name: str) -> str:
    """The value of an environment variable in the server's process ("unset" when it has none)."""
    import os

    return os.environ.get(name, "unset")


def http_app() -> Any:
    return server.streamable_http_app()


if __name__ == "__main__":
    server.run()
