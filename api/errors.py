"""Every error leaves the API as ``{"error": "<Type>", "message": "..."}``: mapped here."""

from __future__ import annotations

import logging

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


def error_response(err: e.DubbingError) -> JSONResponse:
    headers = ({"Retry-After": str(err.retry_after_s)}
               if isinstance(err, e.RateLimitedError) else None)
    if isinstance(err, e.UnauthorizedError):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(body(err.type_name, err.message), status_code=status_for(err),
                        headers=headers)


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

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        name = _HTTP_NAMES.get(err.status_code, "HTTPError")
        return JSONResponse(body(name, str(err.detail)), status_code=err.status_code,
                            headers=getattr(err, "headers", None))
