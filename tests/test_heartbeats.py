"""Every activity stays visibly alive while its engine works, so a dead worker is noticed
within the workflows' heartbeat timeout (seconds), not after a stage's whole budget."""

from __future__ import annotations

import time
from typing import Any

import pytest
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from activities import _base
from activities._base import heartbeat, stage_activity
from workflows.stages import HEARTBEAT_TIMEOUT


def test_a_silent_engine_is_kept_alive_with_the_latest_details(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_base, "KEEPALIVE_EVERY_S", 0.05)

    @activity.defn(name="slow_stage")
    @stage_activity
    def slow_stage(_: str) -> str:
        time.sleep(0.3)  # an engine call with no progress callback
        heartbeat(0.5, 7)  # progress and resume details
        time.sleep(0.3)
        return "done"

    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *d: beats.append(d)
    assert env.run(slow_stage, "x") == "done"
    before = [b for b in beats if b == ()]
    after = beats[len(before):]
    assert len(before) >= 3, beats  # alive while nothing was reported
    assert len(after) >= 3 and all(b == (0.5, 7) for b in after), beats  # details repeated
    n = len(beats)
    time.sleep(0.2)
    assert len(beats) == n  # the keep-alive ended with the activity


def test_the_heartbeat_timeout_is_seconds_not_minutes() -> None:
    assert HEARTBEAT_TIMEOUT.total_seconds() <= 30
    assert HEARTBEAT_TIMEOUT.total_seconds() >= 5 * _base.KEEPALIVE_EVERY_S
