"""Every error leaves the API as ``{"error": "<Type>", "message": "..."}``: mapped here."""

from __future__ import annotations

import logging

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dubcore import errors as e

log = logging.getLogger(__name__)

#: Most specific first.
STATUS_BY_ERROR: list[tuple[type[e.DubbingError], int]] = [
    (e.InvalidRequestError, 400),
    (e.UnauthorizedError, 401),
    (e.InsufficientCreditsError, 402),
    (e.ForbiddenError, 403),
    (e.RateLimitedError, 429),
    (e.RequestInProgressError, 409),
    (e.UploadTooLargeError, 413),
    (e.MediaTooLongError, 413),
    (e.UnsupportedMediaError, 415),
    (e.BadInputError, 422),
    (e.NotFoundError, 404),
    (e.ConflictError, 409),
    (e.ConfigurationError, 500),
    (e.EngineError, 502),
    (e.StorageError, 503),
    (e.ServiceUnavailableError, 503),
]

_HTTP_NAMES = {400: "BadRequest", 401: "Unauthorized", 402: "PaymentRequired",
               403: "Forbidden", 404: "NotFound",
               405: "MethodNotAllowed", 409: "Conflict", 413: "PayloadTooLarge",
               415: "UnsupportedMediaType", 422: "ValidationError", 429: "TooManyRequests"}


def status_for(err: e.DubbingError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(err, cls):
            return status
    return 500


def body(error: str, message: str) -> dict[str, str]:
    return {"error": error, "message": message}


#: Retry-After (seconds) of a 503 whose error does not say how long to wait.
DEFAULT_RETRY_AFTER_S = 5


def error_response(err: e.DubbingError) -> JSONResponse:
    status = status_for(err)
    headers: dict[str, str] | None = None
    if isinstance(err, e.RateLimitedError):
        headers = {"Retry-After": str(err.retry_after_s)}
    elif status == 503:
        retry_after_s = getattr(err, "retry_after_s", None) or DEFAULT_RETRY_AFTER_S
        headers = {"Retry-After": str(retry_after_s)}
    elif isinstance(err, e.UnauthorizedError):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(body(err.type_name, err.message), status_code=status, headers=headers)


def internal_error_response() -> JSONResponse:
    """What a client sees of a bug: the type and the traceback stay in the log."""
    return JSONResponse(body("InternalError", "the server failed to handle this request; "
                             "it was logged, and retrying may not help"), status_code=500)


def install(app: FastAPI) -> None:
    @app.exception_handler(e.DubbingError)
    async def _dubbing(_: Request, err: e.DubbingError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        if any(item.get("type") == "json_invalid" for item in err.errors()):
            return JSONResponse(body("BadRequest", "the request body is not valid JSON"),
                                status_code=400)
        for item in err.errors():
            where = ".".join(str(x) for x in item.get("loc", ()) if x != "body")
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return JSONResponse(body("ValidationError", "; ".join(parts)), status_code=422)

    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    @app.exception_handler(sqlalchemy.exc.OperationalError)
    async def _database(request: Request, err: Exception) -> JSONResponse:
        # No connection free in time, the server gone, SQLite busy: a state that passes.
        log.warning("database unavailable in %s %s: %s", request.method, request.url.path,
                    err)
        return error_response(e.ServiceUnavailableError(
            "the service is busy (its database did not answer in time); try again shortly"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware calls this for any exception nothing else
        # handled, sends our answer, then re-raises for the server.
        log.error("unhandled %s in %s %s", type(err).__name__, request.method,
                  request.url.path, exc_info=err)
        return internal_error_response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        name = _HTTP_NAMES.get(err.status_code, "HTTPError")
        return JSONResponse(body(name, str(err.detail)), status_code=err.status_code,
                            headers=getattr(err, "headers", None))
