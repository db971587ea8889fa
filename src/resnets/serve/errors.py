"""Every error the server sends is JSON: ``{"error": {"code": ..., "message": ...}}``.

The codes are the API contract's (bad_image, empty_body, bad_request, unauthorized, too_large,
too_many_pixels, unsupported_media_type, invalid_parameter, overloaded, not_ready, timeout);
clients branch on ``code``, people read ``message``, which names the part or parameter at fault.
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


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _where(loc) -> str:
    # FastAPI's ("query", "topk") -> "query parameter 'topk'"
    if len(loc) < 2:
        return "request"
    return f"{loc[0]} parameter {'.'.join(map(str, loc[1:]))!r}"


# Codes for the framework's own HTTP errors (unknown path, wrong method).
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors())
        return error_response(422, "invalid_parameter", problems or "invalid parameter")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        # A bug, not the client's fault: logged with its traceback, answered without internals.
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal error ({type(exc).__name__})")
