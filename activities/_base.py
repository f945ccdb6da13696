"""What every activity shares: error mapping, heartbeats, a scratch directory."""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dubcore.errors import DubbingError
from dubcore.settings import Settings
from dubcore.storage import ObjectStore

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger(__name__)


def to_application_error(err: DubbingError) -> ApplicationError:
    """The one place our error tree becomes Temporal's: the class name is the error type,
    which retry policies match against ``NON_RETRYABLE_ERROR_TYPES``."""
    return ApplicationError(err.message, type=err.type_name, non_retryable=not err.retryable)


def stage_activity(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap an activity body so that our errors reach Temporal typed and readable.

    Anything that is not a ``DubbingError`` propagates unchanged and is retried by policy:
    an unexpected failure is never turned into an empty result."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except DubbingError as e:
            activity.logger.warning("%s: %s", e.type_name, e.message)
            raise to_application_error(e) from e

    return wrapper


def heartbeat(fraction: float, *details: Any) -> None:
    """Report progress (0..1) plus resumable details, if running inside an activity."""
    if activity.in_activity():
        activity.heartbeat(round(fraction, 4), *details)


def resume_details() -> tuple[Any, ...]:
    """Details of the last heartbeat of the previous attempt (for resuming), or ()."""
    if not activity.in_activity():
        return ()
    return tuple(activity.info().heartbeat_details)


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="opendub-") as tmp:
        yield Path(tmp)


class StageActivities:
    """Base of the per-capability activity classes: they receive their clients here, and
    load their engine lazily (once per worker process) as a cached property."""

    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
