"""Serve one editor session on 127.0.0.1 until Ctrl+C."""

from __future__ import annotations

import socket
import webbrowser
from collections.abc import Callable

from mtcolor_batch.editor.app import allowed_hosts, create_app
from mtcolor_batch.editor.session import EditorSession


def bind_loopback(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 only (port 0: any free one); never a public interface."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def serve(
    session: EditorSession,
    port: int = 0,
    *,
    open_browser: bool = True,
    announce: Callable[[str], None] = print,
) -> None:
    """Run the editor; ``announce`` gets the address (with the session token in its fragment)."""
    import uvicorn

    sock = bind_loopback(port)
    actual = sock.getsockname()[1]
    url = f"http://127.0.0.1:{actual}/#token={session.token}"
    config = uvicorn.Config(
        create_app(session, allowed_hosts(actual)), log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    announce(url)
    if open_browser:
        webbrowser.open(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
