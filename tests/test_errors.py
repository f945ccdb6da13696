"""The error tree is complete and mapped in one place for Temporal and for HTTP."""

from __future__ import annotations

from dubcore import errors
from dubcore.errors import NON_RETRYABLE_ERROR_TYPES, DubbingError


def _tree(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _tree(sub)
    return out


def test_every_error_has_an_http_status() -> None:
    from api.errors import STATUS_BY_ERROR, status_for

    mapped = {cls for cls, _ in STATUS_BY_ERROR}
    for cls in _tree(DubbingError)[1:]:
        assert any(issubclass(cls, m) for m in mapped), f"{cls.__name__} has no HTTP status"
        assert status_for(cls("x")) != 500 or cls is errors.ConfigurationError


def test_bad_input_is_never_retried_and_transient_faults_are() -> None:
    assert "CorruptMediaError" in NON_RETRYABLE_ERROR_TYPES
    assert "UnsupportedLanguageError" in NON_RETRYABLE_ERROR_TYPES
    assert "EngineError" not in NON_RETRYABLE_ERROR_TYPES
    assert "StorageError" not in NON_RETRYABLE_ERROR_TYPES
    for cls in _tree(errors.BadInputError):
        assert cls.__name__ in NON_RETRYABLE_ERROR_TYPES


def test_activity_mapping_keeps_type_and_message() -> None:
    from activities._base import to_application_error

    err = to_application_error(errors.NoSpeechError("no speech was found"))
    assert err.type == "NoSpeechError" and err.non_retryable
    assert err.message == "no speech was found"
    assert not to_application_error(errors.EngineError("hiccup")).non_retryable
