"""A small REST client for the dubbing API: upload, start, follow, download.

Used by the embedded demo (``python -m stack``), the end-to-end tests and the benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"completed", "failed", "cancelled"}
_CHUNK = 1024 * 1024


class ApiError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any],
                 retry_after_s: str | None = None) -> None:
        super().__init__(f"{status} {body.get('error')}: {body.get('message')}")
        self.status = status
        self.body = body
        self.retry_after_s = retry_after_s


class DubClient:
    def __init__(self, base_url: str, api_key: str | None = None,
                 timeout_s: float = 60.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, resp: httpx.Response) -> dict[str, Any]:
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"error": "HTTPError", "message": resp.text}
            raise ApiError(resp.status_code, body, resp.headers.get("Retry-After"))
        return resp.json() if resp.content else {}

    def upload(self, path: Path, content_type: str = "video/mp4",
               progress: Callable[[int, int], None] | None = None) -> str:
        """Reserve a slot, PUT the file to its presigned URL; returns the job id."""
        size = path.stat().st_size
        slot = self._check(self._http.post("/v1/dubbing/uploads", json={
            "kind": "source", "file_name": path.name, "content_type": content_type,
            "size_bytes": size}))

        def body() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    sent += len(chunk)
                    if progress:
                        progress(sent, size)
                    yield chunk

        target = slot["upload"]
        resp = httpx.request(target["method"], target["url"], headers=target["headers"],
                             content=body(), timeout=None)
        if resp.status_code >= 300:
            raise ApiError(resp.status_code, _json_or_text(resp))
        return str(slot["job_id"])

    def start(self, job_id: str, **options: Any) -> dict[str, Any]:
        return self._check(self._http.post(f"/v1/dubbing/jobs/{job_id}/start", json=options))

    def status(self, job_id: str) -> dict[str, Any]:
        return self._check(self._http.get(f"/v1/jobs/{job_id}"))

    def retry(self, job_id: str) -> dict[str, Any]:
        return self._check(self._http.post(f"/v1/jobs/{job_id}/retry"))

    def wait(self, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None,
             poll_s: float = 1.0, timeout_s: float = 3600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                job = self.status(job_id)
            except ApiError as e:
                if e.status != 429:
                    raise
                time.sleep(float(e.retry_after_s or poll_s))
                continue
            if on_update:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)

    def _lang(self, job_id: str, language: str) -> str:
        return f"/v1/jobs/{job_id}/languages/{language}"

    def script(self, job_id: str, language: str, kind: str = "target",
               version: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"kind": kind}
        if version is not None:
            params["version"] = version
        return self._check(self._http.get(f"{self._lang(job_id, language)}/script",
                                          params=params))

    def speakers(self, job_id: str, language: str) -> dict[str, Any]:
        return self._check(self._http.get(f"{self._lang(job_id, language)}/speakers"))

    def validate_revision(self, job_id: str, language: str, **edit: Any) -> dict[str, Any]:
        return self._check(self._http.post(
            f"{self._lang(job_id, language)}/revisions/validate", json=edit))

    def revise(self, job_id: str, language: str, **edit: Any) -> dict[str, Any]:
        """Submit an edit (segments, speakers, mixing_mode); returns the new version."""
        return self._check(self._http.post(f"{self._lang(job_id, language)}/revisions",
                                           json=edit))

    def approve(self, job_id: str, language: str, segments: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
        return self._check(self._http.post(f"{self._lang(job_id, language)}/approve",
                                           json={"segments": segments or []}))

    def versions(self, job_id: str, language: str) -> dict[str, Any]:
        return self._check(self._http.get(f"{self._lang(job_id, language)}/versions"))

    def wait_version(self, job_id: str, language: str, version: int, poll_s: float = 0.5,
                     timeout_s: float = 1800.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.versions(job_id, language)
            v = next((v for v in got["versions"] if v["version"] == version), None)
            if v is not None and v["status"] in TERMINAL:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"version {version} not done after {timeout_s} s")
            time.sleep(poll_s)

    def download(self, job_id: str, dest: Path, language: str | None = None,
                 version: int | None = None) -> Path:
        params: dict[str, Any] = {"language": language} if language else {}
        if version is not None:
            params["version"] = version
        with self._http.stream("GET", f"/v1/jobs/{job_id}/result", params=params,
                               follow_redirects=True) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiError(resp.status_code, _json_or_text(resp))
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as f:
                for chunk in resp.iter_bytes(_CHUNK):
                    f.write(chunk)
        return dest


def _json_or_text(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
        return body if isinstance(body, dict) else {"message": str(body)}
    except ValueError:
        return {"error": "HTTPError", "message": resp.text}
