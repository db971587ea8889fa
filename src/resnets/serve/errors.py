"""Every error the server sends is JSON: ``{"error": {"code": ..., "message": ...}}``.

The codes are the API contract's (bad_image, empty_body, bad_request, unauthorized, too_large,
too_many_pixels, unsupported_media_type, invalid_parameter, overloaded, not_ready, timeout,
not_implemented);
clients branch on ``code``, people read ``message``, which names the part or parameter at fault.
Under ``/v2`` (the Open Inference Protocol, ``v2.py``) the body is that protocol's own,
``{"error": message}``, which Triton's and KServe's clients read. Every error answered is counted
by its code in the app's metrics (``resnets_rejected_requests_total``, issue 17).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("resnets.serve")


class ApiError(Exception):
    """An error answered with ``status`` and the contract's JSON body (and ``headers``)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def overloaded(message: str, retry_after_s: int = 1) -> ApiError:
    return ApiError(503, "overloaded", message, {"Retry-After": str(retry_after_s)})


def timed_out(timeout_s: float) -> ApiError:
    return ApiError(504, "timeout", f"no answer within {timeout_s:g} s (--timeout)")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None, *,
                   v2: bool = False) -> JSONResponse:
    body = {"error": message} if v2 else {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def answer_error(app, path: str, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """The error answer for a request to ``path`` of ``app``, in its protocol's shape, counted."""
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is not None:
        metrics.reject(status, code)
    return error_response(status, code, message, headers, v2=is_v2(path))


def _where(loc) -> str:
    # FastAPI's ("query", "topk") -> "query parameter 'topk'"
    if len(loc) < 2:
        return "request"
    return f"{loc[0]} parameter {'.'.join(map(str, loc[1:]))!r}"


# Codes for the framework's own HTTP errors (unknown path, wrong method).
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return answer_error(request.app, request.url.path, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors())
        return answer_error(request.app, request.url.path, 422, "invalid_parameter", problems or "invalid parameter")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return answer_error(request.app, request.url.path, exc.status_code, code, str(exc.detail),
                            getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # A bug, not the client's fault: logged with its traceback, answered without internals.
        log.exception("unhandled error")
        return answer_error(request.app, request.url.path, 500, "internal", f"internal error ({type(exc).__name__})")
