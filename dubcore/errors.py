"""One error tree for the whole service (stdlib only: workflows import it).

    DubbingError
    ├── BadInputError                 the user must change something; never retried
    │   ├── UnsupportedMediaError     wrong type, no audio stream, unreadable container
    │   ├── CorruptMediaError         the container opens but decoding fails
    │   ├── MediaTooLongError         over the configured maximum duration
    │   ├── UnsupportedLanguageError  no engine serves this language (pair)
    │   ├── NoSpeechError             nothing to dub: no speech was found
    │   ├── InvalidScriptError        a supplied script / transcript cannot be used
    │   ├── UploadTooLargeError       more bytes than declared or allowed
    │   ├── NoChangeError             an edit that changes nothing
    │   ├── InvalidRequestError       a malformed request (header, URL, combination)
    │   └── IdempotencyKeyReusedError the same Idempotency-Key with a different body
    ├── UnauthorizedError             no, unknown or revoked credentials
    ├── ForbiddenError                valid credentials, but not for this
    ├── InsufficientCreditsError      the balance does not cover the job
    ├── RateLimitedError              too many requests for this key; retry later
    ├── NotFoundError                 an object or job that does not exist
    ├── ConflictError                 the request does not fit the job's current state
    │   └── RequestInProgressError    the first request with this Idempotency-Key still runs
    ├── ConfigurationError            the deployment is misconfigured (missing weights...)
    ├── EngineError                   an engine failed on valid input: transient, retried
    ├── StorageError                  the object store failed: transient, retried
    └── ServiceUnavailableError       a backing service (Temporal) is unreachable: retry later

Activities map these to Temporal `ApplicationError`s in one place
(`activities/_base.py`); `NON_RETRYABLE_ERROR_TYPES` is what retry policies list.
The API maps them to `{"error", "message"}` responses in one place (`api/errors.py`).
"""

from __future__ import annotations


class DubbingError(Exception):
    """Base of every error this service raises on purpose."""

    retryable: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def type_name(self) -> str:
        return type(self).__name__


class BadInputError(DubbingError):
    retryable = False


class UnsupportedMediaError(BadInputError):
    pass


class CorruptMediaError(BadInputError):
    pass


class MediaTooLongError(BadInputError):
    pass


class UnsupportedLanguageError(BadInputError):
    pass


class NoSpeechError(BadInputError):
    pass


class InvalidScriptError(BadInputError):
    pass


class NoChangeError(BadInputError):
    pass


class UploadTooLargeError(BadInputError):
    pass


class InvalidRequestError(BadInputError):
    pass


class IdempotencyKeyReusedError(BadInputError):
    pass


class UnauthorizedError(DubbingError):
    retryable = False


class ForbiddenError(DubbingError):
    retryable = False


class InsufficientCreditsError(DubbingError):
    retryable = False


class RateLimitedError(DubbingError):
    retryable = True

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFoundError(DubbingError):
    retryable = False


class ConflictError(DubbingError):
    retryable = False


class RequestInProgressError(ConflictError):
    pass


class ConfigurationError(DubbingError):
    retryable = False


class EngineError(DubbingError):
    retryable = True


class StorageError(DubbingError):
    retryable = True


class ServiceUnavailableError(DubbingError):
    retryable = True


def _all_subclasses(cls: type[DubbingError]) -> list[type[DubbingError]]:
    out: list[type[DubbingError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


#: Class names Temporal must never retry (retry policies match on the type name).
_ALL_ERRORS: list[type[DubbingError]] = [DubbingError, *_all_subclasses(DubbingError)]
NON_RETRYABLE_ERROR_TYPES: list[str] = sorted(c.__name__ for c in _ALL_ERRORS if not c.retryable)


def error_named(type_name: str, message: str) -> DubbingError:
    """The error of our tree with this class name (as it came back through Temporal), or a
    `ConflictError` for a name we do not know."""
    for cls in _ALL_ERRORS:
        if cls.__name__ == type_name:
            return cls(message)
    return ConflictError(message)
