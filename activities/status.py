"""The status projection's writer: the workflows' ``record_status`` local activity. It runs
on the workflow worker (which reaches the database) and never on a stage's thread pool: it
is async and does its database work on the event loop's default executor."""

from __future__ import annotations

import asyncio

from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from dubcore import status
from dubcore.contracts import RECORD_STATUS_ACTIVITY, StatusSnapshot


class StatusActivities:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    @activity.defn(name=RECORD_STATUS_ACTIVITY)
    async def record_status(self, snap: StatusSnapshot) -> bool:
        return await asyncio.to_thread(self._record, snap)

    def _record(self, snap: StatusSnapshot) -> bool:
        with self._sessions() as session:
            return status.record(session, snap)
