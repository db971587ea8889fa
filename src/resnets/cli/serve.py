"""``resnets serve``: the HTTP inference API (:func:`resnets.serve.create_app`) on uvicorn."""

from __future__ import annotations

import os

from . import UsageError


def run(args) -> int:
    try:
        import uvicorn

        from ..serve import create_app
    except ImportError as exc:
        raise UsageError(f"resnets serve needs the serve extra ({exc.name} is missing): "
                         'pip install -e ".[serve]"') from None
    token = args.token or os.environ.get("RESNETS_SERVE_TOKEN") or None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    app = create_app(args.weights, model=args.model, device=args.device, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, timeout_s=args.timeout,
                     max_bytes=args.max_bytes, max_pixels=args.max_pixels, token=token,
                     batching=not args.no_batching)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: serving on {args.host} without --token: anyone who can reach it can use it")

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            # uvicorn re-raises SIGINT/SIGTERM once its graceful shutdown is over, so the process
            # would die of the signal; a server asked to stop that stopped cleanly exits 0.
            getattr(self, "_captured_signals", []).clear()

    Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)).run()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="HTTP inference API with dynamic batching (predict, Grad-CAM, model card)",
        description="Serve a model over HTTP: POST /v1/predict, POST /v1/explain, GET /v1/model, "
                    "/healthz, /readyz, /docs. Listens on the loopback interface unless --host says otherwise.")
    p.add_argument("--weights", required=True, help="weights file, or a shipped tag such as cifar10 (with --model)")
    p.add_argument("--model", help="model name (default: from the weights' metadata)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's choice; on a machine "
                                              "busy with other work, 1 avoids threads waiting on each other)")
    p.add_argument("--max-batch", type=int, default=32, help="images per forward pass at most")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the oldest request waits for others to share its batch")
    p.add_argument("--queue-size", type=int, default=256,
                   help="images waiting at most; beyond it requests get 503 with Retry-After")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request before 504")
    p.add_argument("--max-bytes", type=int, default=10 * 2**20, help="largest request body in bytes")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="largest image in pixels, read from its header before decoding")
    p.add_argument("--token", help="require Authorization: Bearer TOKEN on /v1/* (or set RESNETS_SERVE_TOKEN)")
    p.add_argument("--no-batching", action="store_true", help="run each request alone (for comparison)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)
