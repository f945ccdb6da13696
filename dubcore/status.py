"""A job's status, as its workflows last published it (the status projection).

The workflows write a whole snapshot of their status (`StatusSnapshot`, through the
``record_status`` local activity) whenever a stage starts or ends and whenever their state
changes. Reads come from here: they need neither a worker nor Temporal, and they cost one
indexed query. The job index (``jobs.state``) follows the aggregate, so listings agree.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session
from temporalio.converter import value_to_type

from dubcore.contracts import (
    LANGUAGE_STAGES,
    SHARED_STAGES,
    STAGE_WEIGHTS,
    JobProgress,
    JobState,
    JobStatus,
    StatusSnapshot,
    Version,
    language_workflow_id,
    version_one,
)
from dubcore.db import Job, StatusProjection, utcnow

TERMINAL = frozenset({JobState.COMPLETED.value, JobState.FAILED.value,
                      JobState.CANCELLED.value})
_SHARED_WEIGHT = sum(STAGE_WEIGHTS[s] for s in SHARED_STAGES)
_LANGUAGE_WEIGHT = sum(STAGE_WEIGHTS[s] for s in LANGUAGE_STAGES)


@dataclass
class Projection:
    """Everything the job's workflows last published."""

    job: JobProgress | None = None
    languages: dict[str, JobStatus] = field(default_factory=dict)


@dataclass
class LanguageView:
    language: str
    status: str
    workflow_id: str
    stage: str | None = None
    percent: int = 0
    status_detail: JobStatus | None = None
    latest: Version | None = None
    """The newest finished render (version 1 is the language workflow's own result)."""


@dataclass
class JobView:
    """A job's status for a reader: state, stage, percent, and each language."""

    status: str
    stage: str | None = None
    percent: int = 0
    progress: JobProgress | None = None
    languages: list[LanguageView] = field(default_factory=list)


# Writing ---------------------------------------------------------------------------------

def record(session: Session, snap: StatusSnapshot) -> bool:
    """Store a snapshot unless a newer one of the same workflow is there already; keep the
    job index's state in step. Returns whether it was stored."""
    row = session.execute(select(StatusProjection)
                          .where(StatusProjection.workflow_id == snap.workflow_id)
                          .with_for_update()).scalar_one_or_none()
    if row is not None and (row.at_ms, row.seq) >= (snap.at_ms, snap.seq):
        return False  # a late write of an older snapshot
    status: JobProgress | JobStatus | None = snap.job or snap.language_status
    if status is None:
        raise ValueError("a status snapshot carries the job's or a language's status")
    values = {"job_id": snap.job_id, "language": snap.language, "state": status.state.value,
              "stage": status.stage, "at_ms": snap.at_ms, "seq": snap.seq,
              "status": dataclasses.asdict(status), "updated_at": utcnow()}
    if row is None:
        session.add(StatusProjection(workflow_id=snap.workflow_id, **values))
    else:
        for name, value in values.items():
            setattr(row, name, value)
    session.flush()
    job = session.get(Job, snap.job_id)
    if job is not None and job.workflow_id:
        state = aggregate(read(session, snap.job_id)).status
        if job.state != state:
            job.state = state
            if state in TERMINAL:
                job.finished_at = job.finished_at or utcnow()
    session.commit()
    return True


# Reading ---------------------------------------------------------------------------------

def read(session: Session, job_id: str) -> Projection:
    """What the job's workflows last published (empty before the first snapshot)."""
    out = Projection()
    for row in session.scalars(select(StatusProjection)
                               .where(StatusProjection.job_id == job_id)):
        decoded = _decode(row)
        if isinstance(decoded, JobProgress):
            out.job = decoded
        else:
            out.languages[row.language or ""] = decoded
    return out


_DECODED: OrderedDict[tuple[str, int, int], JobProgress | JobStatus] = OrderedDict()
_DECODED_MAX = 4096
_decoded_lock = threading.Lock()


def _decode(row: StatusProjection) -> JobProgress | JobStatus:
    """The snapshot as a dataclass. A snapshot never changes once written, and decoding is
    most of a read's cost, so each is decoded once per process (readers never mutate it)."""
    key = (row.workflow_id, row.at_ms, row.seq)
    with _decoded_lock:
        hit = _DECODED.get(key)
        if hit is not None:
            _DECODED.move_to_end(key)
            return hit
    value: JobProgress | JobStatus = value_to_type(
        JobProgress if row.language is None else JobStatus, row.status)
    with _decoded_lock:
        _DECODED[key] = value
        if len(_DECODED) > _DECODED_MAX:
            _DECODED.popitem(last=False)
    return value


def latest_version(pr: JobProgress, language: str, number: int | None = None
                   ) -> Version | None:
    """A language's newest finished render, or the one numbered ``number``."""
    done = [v for v in pr.versions.get(language, []) if v.state is JobState.COMPLETED]
    if number is not None:
        return next((v for v in done if v.version == number), None)
    return done[-1] if done else None


def aggregate(p: Projection, job_state: str = JobState.QUEUED.value) -> JobView:
    """The job's state, stage and percent from its workflows' snapshots.

    ``job_state`` is the index's state, shown while no workflow has published yet (queued,
    or past the namespace's retention when it ended long ago)."""
    pr = p.job
    if pr is None:
        return JobView(status=job_state if job_state in TERMINAL else JobState.QUEUED.value)
    out = JobView(status=pr.state.value, stage=pr.stage, progress=pr)
    shared_done = sum(STAGE_WEIGHTS[s] for s in SHARED_STAGES
                      if any(t.stage == s.value for t in pr.timings))
    fractions = []
    for lang in pr.target_languages:
        st = p.languages.get(lang)
        lo = LanguageView(language=lang, status=pr.languages.get(lang, "queued"),
                          workflow_id=language_workflow_id(pr.job_id, lang))
        if st is not None:
            lo.status, lo.stage, lo.percent = st.state.value, st.stage, st.percent
            lo.status_detail = st
            lo.latest = latest_version(pr, lang) or (
                version_one(st.result, "") if st.result else None)
        fractions.append(1.0 if lo.status in TERMINAL else lo.percent / 100)
        out.languages.append(lo)
    states = {lo.status for lo in out.languages}
    if pr.state is JobState.RUNNING or states & {"running", "queued"}:
        out.status = JobState.RUNNING.value
        if JobState.AWAITING_REVIEW.value in states and not states & {"running", "queued"}:
            out.status = JobState.AWAITING_REVIEW.value
    elif JobState.COMPLETED.value in states:
        out.status = JobState.COMPLETED.value
    lang_part = _LANGUAGE_WEIGHT * (sum(fractions) / len(fractions) if fractions else 0)
    out.percent = round(100 * (shared_done + lang_part) / (_SHARED_WEIGHT + _LANGUAGE_WEIGHT))
    if out.status == JobState.COMPLETED.value:
        out.percent = 100
    return out
