"""``resnets serve``: the HTTP inference API (:func:`resnets.serve.create_app`) on uvicorn."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..serve import limits
from . import UsageError
from .options import integer, number


def run(args) -> int:
    from ..errors import need

    for module in ("uvicorn", "fastapi", "prometheus_client"):  # so that a missing extra is a message
        need(module, "serve", "resnets serve")
    from ..serve import create_app

    token = _token(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    app = create_app(args.weights, model=args.model, device=args.device, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, timeout_s=args.timeout,
                     max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                     max_request_pixels=args.max_request_pixels, max_requests=args.max_requests,
                     max_inflight_bytes=args.max_inflight_bytes, token=token, batching=not args.no_batching,
                     backend=args.backend, threads=args.threads)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: serving on {args.host} without a token: anyone who can reach it can use it")
    if args.drain < 0:
        raise UsageError(f"--drain must be 0 or more seconds; got {args.drain}")
    from ..serve.server import run as serve

    serve(app, host=args.host, port=args.port, log_level=args.log_level, drain_s=args.drain)
    return 0


def _token(args) -> str | None:
    """--token-file, else RESNETS_SERVE_TOKEN, else --token (which `ps` shows to every user)."""
    given = [name for name, value in (("--token", args.token), ("--token-file", args.token_file)) if value]
    if len(given) > 1:
        raise UsageError("give --token or --token-file, not both")
    if args.token_file:
        path = Path(args.token_file)
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --token-file {path}: {exc}") from None
        if not token:
            raise UsageError(f"--token-file {path} is empty")
        return token
    if args.token:
        print("warning: --token is visible to every user of this machine (ps); prefer --token-file FILE "
              "or RESNETS_SERVE_TOKEN", file=sys.stderr)
        return args.token
    return os.environ.get("RESNETS_SERVE_TOKEN") or None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="HTTP inference API with dynamic batching (predict, Grad-CAM, model card)",
        description="Serve a model over HTTP: POST /v1/predict, POST /v1/explain, GET /v1/model, "
                    "/healthz, /readyz, /openapi.json; the Open Inference Protocol (KServe v2, Triton's HTTP "
                    "clients) under /v2; Prometheus metrics at /metrics. Listens on the loopback interface unless "
                    "--host says otherwise.")
    p.add_argument("--weights", required=True, help="weights file, or a shipped tag such as cifar10 (with --model), "
                                                    "or an exported model file (.onnx, .xml, .pt2) with its metadata")
    p.add_argument("--model", help="model name (default: from the weights' metadata)")
    from .train import add_backend_argument

    add_backend_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=integer(0), default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=integer(0), help="CPU threads for the model, whatever the backend (default, or 0: the "
                                              "runtime's choice; on a machine busy with other work, 1 avoids threads "
                                              "waiting on each other)")
    p.add_argument("--max-batch", type=integer(1), default=limits.MAX_BATCH, help="images per forward pass at most")
    p.add_argument("--max-wait-ms", type=number(0), default=limits.MAX_WAIT_MS,
                   help="how long the oldest request waits for others to share its batch")
    p.add_argument("--queue-size", type=integer(1), default=limits.QUEUE_SIZE,
                   help="images waiting at most; beyond it requests get 503 with Retry-After")
    p.add_argument("--timeout", type=number(0, above=True, infinite=True), default=limits.TIMEOUT_S, help="seconds per request before 504")
    p.add_argument("--max-bytes", type=integer(1), default=limits.MAX_BYTES, help="largest request body in bytes")
    p.add_argument("--max-pixels", type=integer(1), default=limits.MAX_PIXELS,
                   help="largest image in pixels, read from its header before decoding; also bounds a "
                        "shorter-side resize's output (never below 4096 x 4096)")
    p.add_argument("--max-request-pixels", type=integer(1),
                   help="pixels per request over all its images, read from their headers before decoding "
                        f"(default: {limits.REQUEST_PIXELS_PER_MAX_PIXELS} x --max-pixels)")
    p.add_argument("--max-requests", type=integer(1), default=limits.MAX_REQUESTS,
                   help="requests to /v1/* and /v2/models/* in flight at once; beyond it 503 with Retry-After")
    p.add_argument("--max-inflight-bytes", type=integer(1),
                   help="bytes of request bodies held at once over all requests; beyond it 503 with Retry-After "
                        f"(default: {limits.INFLIGHT_BYTES_PER_MAX_BYTES} x --max-bytes)")
    p.add_argument("--drain", type=number(0), default=0.5,
                   help="seconds that SIGINT/SIGTERM keep answering new requests 503 before the server stops listening")
    p.add_argument("--token-file", help="require Authorization: Bearer TOKEN on /v1/*, /v2/models/* and /metrics, "
                                        "TOKEN read from this file "
                                        "(or set RESNETS_SERVE_TOKEN)")
    p.add_argument("--token", help="the token on the command line (visible in ps: prefer --token-file)")
    p.add_argument("--no-batching", action="store_true", help="run each request alone (for comparison)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)
