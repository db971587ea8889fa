"""``GET /metrics``: the server's counts in the Prometheus text format, with ``prometheus-client`` (issue 17).

Each app has its own :class:`prometheus_client.CollectorRegistry`, not the library's global one:
two apps in one process (the tests, an embedding) keep separate counts, and a scrape shows this
server's figures only. What is measured, and where:

- every HTTP answer, by route template (``/v2/models/{name}/infer``, not the path a client typed,
  so that the number of series stays bounded), method and status code, and its latency:
  :class:`Measure`, the outermost ASGI middleware, so that answers given before any route runs
  (the ``--max-requests`` 503s) are counted too;
- every error answer by reason, its contract code (``too_large``, ``overloaded``, ``timeout``,
  ``client_closed_request``...): counted where the error body is written (``errors.py``);
- images per forward pass and its duration: the batcher's ``on_batch``;
- images queued for the model (read when scraped), images of requests in flight, requests in flight;
- the seconds the model took to load and to warm up.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.routing import Match

# Seconds: a CIFAR ResNet-20 answers in milliseconds, a large model on a busy CPU in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "(unmatched)"  # the route label of a path no route serves (answered 404)

__all__ = ["CONTENT_TYPE_LATEST", "Measure", "Metrics"]


class Metrics:
    """The app's collectors, registered in their own registry (``render`` is what ``/metrics`` sends)."""

    def __init__(self, max_batch: int):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("resnets_http_requests", "HTTP requests answered, by route template, method "
                                "and status code", ["route", "method", "status"], registry=registry)
        self.latency = Histogram("resnets_http_request_duration_seconds", "Seconds from a request's arrival to "
                                 "the end of its answer, by route template", ["route"], buckets=LATENCY_BUCKETS,
                                 registry=registry)
        self.rejected = Counter("resnets_rejected_requests", "Requests answered with an error, by reason (the "
                                "error code) and status code", ["reason", "status"], registry=registry)
        self.requests_in_flight = Gauge("resnets_http_requests_in_flight", "HTTP requests being answered",
                                        registry=registry)
        self.images_in_flight = Gauge("resnets_images_in_flight", "Images of prediction requests read and not "
                                      "yet answered (decoding, queued or in the model)", registry=registry)
        self.queue_depth = Gauge("resnets_queue_depth_images", "Images queued for the model, waiting for a "
                                 "forward pass (--queue-size bounds it)", registry=registry)
        self.batch_size = Histogram("resnets_batch_size_images", "Images per forward pass of the model",
                                    buckets=_powers_of_two(max_batch), registry=registry)
        self.batch_duration = Histogram("resnets_batch_duration_seconds", "Seconds per forward pass of the model",
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self.model_load = Gauge("resnets_model_load_seconds", "Seconds to load the model and its weights",
                                registry=registry)
        self.model_warmup = Gauge("resnets_model_warmup_seconds", "Seconds of warm-up forward passes before "
                                  "the server said ready", registry=registry)
        self.model = Info("resnets_model", "The model served", registry=registry)

    def batch(self, images: int, seconds: float) -> None:
        """The batcher's ``on_batch``: one forward pass of ``images``."""
        self.batch_size.observe(images)
        self.batch_duration.observe(seconds)

    def reject(self, status: int, reason: str) -> None:
        self.rejected.labels(reason=reason, status=str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _powers_of_two(limit: int) -> list[float]:
    buckets, n = [], 1
    while n < limit:
        buckets.append(float(n))
        n *= 2
    return [*buckets, float(limit)]


class Measure:
    """ASGI middleware: counts every HTTP answer and times it (see the module's docstring)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = _route(scope)
        status = 500  # what the client gets if nothing below answers (an unhandled error)

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        self.metrics.requests_in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.requests_in_flight.dec()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()


def _route(scope) -> str:
    """The template of the route that serves ``scope`` (Starlette puts the app in the scope before
    any middleware runs); a route that matches the path but not the method (405) counts as itself."""
    partial = None
    for route in getattr(scope.get("app"), "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.path
        if match == Match.PARTIAL and partial is None:
            partial = route.path
    return partial or UNMATCHED
