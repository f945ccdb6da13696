"""Replay: the histories of real jobs (``tests/histories/``, recorded by
``scripts/record_histories.py``) replay against the current workflow code. A change that
would break running jobs fails here; guard it with ``workflow.patched``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.dubbing import DubbingWorkflow
from workflows.export import ExportWorkflow
from workflows.job import DubbingJobWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def _load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def test_fixtures_cover_every_workflow_type() -> None:
    kinds = Counter(p.stem.split("-")[0] for p in HISTORIES)
    assert set(kinds) == {"job", "dub", "export"}, kinds
    assert kinds["job"] >= 2  # one with review, approval, a revision and an export; one cancelled
    events = {p.stem: p.read_text() for p in HISTORIES}
    job = next(text for name, text in events.items() if name.startswith("job")
               and '"revise"' in text)
    assert "approve" in "".join(events.values()) and "deliver_webhook" in job


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays_on_the_current_code(path: Path) -> None:
    replayer = Replayer(workflows=[DubbingJobWorkflow, DubbingWorkflow, ExportWorkflow])
    result = await replayer.replay_workflow(_load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
