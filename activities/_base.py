"""What every activity shares: error mapping, heartbeats, a scratch directory."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dubcore import registry
from dubcore.contracts import Stage
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


#: How often a running activity tells Temporal it is alive, whatever its engine is doing.
#: The workflows' heartbeat timeout (tens of seconds) is what a killed worker costs; the
#: SDK forwards at most one heartbeat per 80 % of that timeout, so this can be short.
KEEPALIVE_EVERY_S = 2.0


class _KeepAlive:
    """Heartbeats the current activity from a background thread until stopped, repeating
    the latest progress and resume details, so a stage whose engine runs for minutes
    without a callback is still seen alive and a dead worker is noticed in seconds."""

    def __init__(self) -> None:
        self.details: tuple[Any, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._run,), daemon=True,
                                        name="activity-keepalive")

    def __enter__(self) -> _KeepAlive:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def beat(self, *details: Any) -> None:
        self.details = details
        activity.heartbeat(*details)

    def _run(self) -> None:
        while not self._stop.wait(KEEPALIVE_EVERY_S):
            activity.heartbeat(*self.details)


_keepalive: contextvars.ContextVar[_KeepAlive | None] = contextvars.ContextVar(
    "opendub_keepalive", default=None)


def stage_activity(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap an activity body: keep it heartbeating while it runs, and make our errors reach
    Temporal typed and readable.

    Anything that is not a ``DubbingError`` propagates unchanged and is retried by policy:
    an unexpected failure is never turned into an empty result."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with contextlib.ExitStack() as stack:
            if activity.in_activity():
                token = _keepalive.set(stack.enter_context(_KeepAlive()))
                stack.callback(_keepalive.reset, token)
            try:
                return fn(*args, **kwargs)
            except DubbingError as e:
                activity.logger.warning("%s: %s", e.type_name, e.message)
                raise to_application_error(e) from e

    return wrapper


def heartbeat(fraction: float, *details: Any) -> None:
    """Report progress (0..1) plus resumable details, if running inside an activity; the
    keep-alive repeats them until the next report."""
    if not activity.in_activity():
        return
    keepalive = _keepalive.get()
    if keepalive is not None:
        keepalive.beat(round(fraction, 4), *details)
    else:
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
    load their stage's engine lazily (once per worker process) through the engine
    registry, as the settings pick it (``DUB_<STAGE>_ENGINE``)."""

    #: The stage whose engine ``engine`` is (None: the class runs no engine).
    stage: ClassVar[Stage | None] = None

    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings

    @cached_property
    def spec(self) -> registry.EngineSpec:
        assert self.stage is not None, f"{type(self).__name__} runs no engine"
        return registry.selected(self._settings, self.stage)

    @cached_property
    def engine(self) -> Any:
        return self.spec.load(self._settings)

    @property
    def model(self) -> str:
        """What produced a result: the model id and revision of the stage's engine."""
        return self.spec.model_ref(self._settings)

    def load(self) -> None:
        """Load this capability's engine now (its ``engine`` property, once per process)
        and warm it (its ``warm()``, where it has one: a tiny inference that allocates what
        the first real one would), so that the first job does not pay for either. A worker
        calls it before it polls."""
        if self.stage is None:
            return
        started = time.monotonic()
        engine = self.engine
        loaded = time.monotonic()
        warm = getattr(engine, "warm", None)
        if warm is not None:
            warm()  # one small inference: the first job then runs as fast as the next
        log.info("%s: %s (%s) loaded in %.1f s, warmed in %.1f s", type(self).__name__,
                 getattr(engine, "name", type(engine).__name__), self.model,
                 loaded - started, time.monotonic() - loaded)
