"""Record the Temporal histories of real jobs as replay fixtures (``tests/histories/``).

Runs the real stack (dev server, API, a worker with the real CPU engines) on the bundled
sample and drives it over HTTP through every workflow feature: a job paused for review and
approved with an edit, a revision (version 2), an export, a signed webhook, the review
window closed by a cancel; and a second job cancelled while it synthesizes. Every workflow
those jobs ran (``DubbingJobWorkflow``, ``DubbingWorkflow``, ``ExportWorkflow``) is saved
as JSON; ``tests/test_replay.py`` replays them against the current workflow code.

Re-record only when a workflow change is meant to break replay (and never for a change
that running jobs will meet: guard those with ``workflow.patched``):

    .venv/bin/python scripts/record_histories.py
"""

from __future__ import annotations

import asyncio
import http.server
import json
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from dubcore.contracts import SEARCH_ATTRIBUTES  # noqa: E402
from stack.client import DubClient  # noqa: E402
from tests.conftest import _KEYS  # noqa: E402
from tests.stack import running_stack  # noqa: E402

OUT = ROOT / "tests" / "histories"
SAMPLE = ROOT / "samples" / "two_speakers_en.mp4"


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def _until(check: Any, what: str, timeout_s: float = 600) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def _drive(api: DubClient, hook_url: str) -> list[str]:
    """Both jobs, over HTTP; returns the workflow ids they ran."""
    job = api.upload(SAMPLE)
    api.start(job, target_languages=["pt-BR"], pause_for_review=True, callback_url=hook_url)
    _until(lambda: api.status(job)["status"] == "awaiting_review", "review pause")
    draft = api.script(job, "pt-BR", version=0)["segments"]
    api.approve(job, "pt-BR", [{"index": draft[0]["index"],
                                "text": draft[0]["text"] + " Muito bem."}])
    done = api.wait(job, None, 0.5, 900)
    assert done["status"] == "completed", done
    v1 = api.script(job, "pt-BR")["segments"]
    api.revise(job, "pt-BR", base_version=1,
               segments=[{"index": v1[-1]["index"], "text": v1[-1]["text"] + " Obrigado."}])
    assert api.wait_version(job, "pt-BR", 2)["status"] == "completed"
    export = api._check(api._http.post(f"/v1/jobs/{job}/exports",
                                       json={"language": "pt-BR", "format": "mp3"}))
    _until(lambda: api._check(api._http.get(f"/v1/exports/{export['export_id']}"))["status"]
           in ("completed", "failed"), "export")
    api._check(api._http.post(f"/v1/jobs/{job}/cancel"))  # closes the review window

    other = api.upload(SAMPLE)
    api.start(other, target_languages=["pt-BR"])
    _until(lambda: any(lo.get("stage") == "synthesize"
                       for lo in api.status(other)["languages"]), "synthesis of job 2")
    api._check(api._http.post(f"/v1/jobs/{other}/cancel"))
    _until(lambda: api.status(other)["status"] == "cancelled", "cancel of job 2")
    return [f"job-{job}", f"dub-{job}-pt-BR", f"export-{export['export_id']}",
            f"job-{other}", f"dub-{other}-pt-BR"]


async def _record(client: Client, data: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        async with running_stack(client, data, signing_secret=secrets.token_urlsafe(32),
                                 outbound_allowed_networks=["127.0.0.0/8"],
                                 review_window_s=3600) as stack:
            with DubClient(stack.api_url, stack.api_key) as api:
                ids = await asyncio.to_thread(_drive, api, hook)
            OUT.mkdir(parents=True, exist_ok=True)
            for old in OUT.glob("*.json"):
                old.unlink()
            for wf_id in ids:
                handle = client.get_workflow_handle(wf_id)
                await _until_closed(handle)
                history = await handle.fetch_history()
                kind = wf_id.split("-", 1)[0]
                path = OUT / f"{kind}-{len(list(OUT.glob(kind + '-*.json'))) + 1}.json"
                path.write_text(json.dumps(json.loads(history.to_json()), indent=1))
                print(f"{wf_id}: {len(history.events)} events -> {path.relative_to(ROOT)}")
    finally:
        server.shutdown()


async def _until_closed(handle: Any) -> None:
    for _ in range(600):
        desc = await handle.describe()
        if desc.close_time is not None:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{handle.id} did not close")


async def main() -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"), ui=False,
        search_attributes=[_KEYS[t](n) for n, t in SEARCH_ATTRIBUTES.items()],
        dev_server_log_level="error")
    try:
        with tempfile.TemporaryDirectory(prefix="opendub-record-") as tmp:
            await _record(env.client, Path(tmp))
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
