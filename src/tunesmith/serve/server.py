"""Running the app with uvicorn: one process, one event loop.

`serve_beside(server, sockets, step)` runs uvicorn in a thread and `step` (the engine's loop) in
the calling thread: the thread that loaded the model keeps torch's compute (see Engine.run for why
that matters on a machine with few cores), and the event loop beside it only moves bytes.

On SIGINT/SIGTERM uvicorn stops accepting connections and waits up to `grace` seconds for the
requests in flight (streams included) to finish; a second Ctrl-C stops at once. run() then
returns normally (uvicorn would re-raise the signal and kill the process before the caller could
shut the engine down), and `stopped_by` names the signal.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from ..errors import UserError


class Server(uvicorn.Server):
    """uvicorn's server, except that a signal it handled gracefully is not raised again on exit."""

    stopped_by: str | None = None

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", [])
            if captured:
                self.stopped_by = signal.Signals(captured[0]).name
            captured.clear()


def serve_beside(server: Server, sockets: list[socket.socket], step: Callable[[Callable[[], bool]], None]) -> None:
    """Run `server` in a thread and `step(until)` in this (the main) thread until the server has
    stopped. SIGINT/SIGTERM reach uvicorn as if it ran here: the first stops it gracefully (and
    names the signal in `stopped_by`), a second Ctrl-C stops it at once."""
    http = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name="tunesmith-http", daemon=True)

    def handle(sig: int, frame) -> None:
        if server.stopped_by is None:
            server.stopped_by = signal.Signals(sig).name
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        http.start()
        step(lambda: not http.is_alive())
    finally:
        server.should_exit = True
        http.join()
        for sig, old in previous.items():
            signal.signal(sig, old)


def make_server(app, host: str, port: int, grace: float, log_level: str = "info",
                access_log: bool = True) -> Server:
    """A uvicorn server for `app` (not started: call .run(), or run it in a thread and set
    .should_exit to stop it)."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=grace, lifespan="off", server_header=False)
    return Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for uvicorn (server.run(sockets=[...])), made before the model
    loads so a busy port or a wrong address is one message at once."""
    address = host.strip("[]")
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: cannot be resolved ({exc.strerror}); give an IP address or a host name "
                        "of this machine") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running there? Choose "
                        "another --port") from None
    return sock
