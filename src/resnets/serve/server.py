"""Running the app on uvicorn, with a shutdown that answers every connection it accepted.

On SIGINT/SIGTERM uvicorn closes its listening sockets, closes every connection that is not in the
middle of a request and waits for the rest. A client whose request was accepted but not yet read
(on a new connection, or the next one on a kept-alive connection) then sees its connection closed
without a reply: 11-30 of 200 under load in issue 15. So the shutdown is in three steps: for
``drain_s`` the server keeps listening and answers every new request 503 with ``Retry-After`` and
``Connection: close`` (``/readyz`` says ``shutting_down``, so a load balancer moves away); then it
stops listening and gives connections already accepted ``settle_s`` to deliver what they sent,
which is answered the same way; then uvicorn's own shutdown finishes the requests in flight.
"""

from __future__ import annotations

import asyncio

import uvicorn


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_s: float = 0.5, settle_s: float = 0.2):
        super().__init__(config)
        self.drain_s, self.settle_s = drain_s, settle_s

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        # uvicorn re-raises SIGINT/SIGTERM once its graceful shutdown is over, so the process
        # would die of the signal; a server asked to stop that stopped cleanly exits 0.
        getattr(self, "_captured_signals", []).clear()

    async def shutdown(self, sockets=None) -> None:
        app = self.config.loaded_app if self.config.loaded else None
        state = getattr(_innermost(app), "state", None)
        if state is not None and not self.force_exit:
            state.status = "shutting_down"  # new requests: 503 + Retry-After + Connection: close
            await asyncio.sleep(self.drain_s)
            for server in self.servers:
                server.close()
            await asyncio.sleep(self.settle_s)
        await super().shutdown(sockets)


def _innermost(app):
    # uvicorn wraps the app (proxy headers, message logger); the FastAPI app is at the bottom.
    seen = 0
    while app is not None and not hasattr(app, "state") and seen < 8:
        app, seen = getattr(app, "app", None), seen + 1
    return app


def run(app, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", drain_s: float = 0.5) -> None:
    """Serve ``app`` (from :func:`resnets.serve.create_app`) until SIGINT/SIGTERM, then drain."""
    Server(uvicorn.Config(app, host=host, port=port, log_level=log_level), drain_s=drain_s).run()
