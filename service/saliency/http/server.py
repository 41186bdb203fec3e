"""uvicorn driven from the gRPC server's event loop: started and stopped with it (server.py),
no signal handlers of its own (`saliency serve` owns SIGTERM / SIGHUP), its socket bound here
so a busy port fails the start with OSError and port 0 picks a free one."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import uvicorn

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(self, app, host: str, port: int, ssl_context: ssl.SSLContext | None, grace_s: float):
        self._sock = _bind(host, port)
        self.host, self.port = host, self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,  # the service's logging (runtime/logs.py) and its own access lines
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=grace_s,
            # Each request holds its connection's share of memory; idle keep-alives go soon.
            timeout_keep_alive=5,
        )
        config.load()
        config.ssl = ssl_context  # uvicorn builds its own from files; ours is reloaded in place
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        self._main: asyncio.Task | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._server.config.ssl is not None else "http"

    async def start(self) -> None:
        await self._server.startup(sockets=[self._sock])
        self._main = asyncio.create_task(self._server.main_loop(), name="http-server")

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish within the grace, then close."""
        if self._main is None:
            self._sock.close()
            return
        self._server.should_exit = True
        await self._main
        await self._server.shutdown(sockets=[self._sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(f"config http_host / http_port: cannot bind HTTP on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
