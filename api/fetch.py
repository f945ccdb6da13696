"""Fetching a source from a URL for ``source_url``, with the guards a public service needs:
every request and redirect hop goes through the outbound guard (`dubcore.outbound`: http(s)
only, public addresses only unless ``DUB_OUTBOUND_ALLOWED_NETWORKS``, connected to the
address that was checked), a size and a time limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from dubcore.errors import BadInputError, UploadTooLargeError
from dubcore.outbound import guarded_async_client
from dubcore.settings import Settings

MAX_REDIRECTS = 5
#: Connect / read / write limit of one network operation of a download.
NETWORK_TIMEOUT_S = 30.0
CHUNK_BYTES = 1024 * 1024


async def fetch(url: str, dest: Path, settings: Settings) -> str:
    """Download ``url`` into ``dest``; returns the content type the server declared.

    Raises `InvalidRequestError` for a destination the guard refuses (at any hop),
    `UploadTooLargeError` past ``source_url_max_bytes`` and `BadInputError` when the
    server fails, redirects too often or takes longer than ``source_url_timeout_s``."""
    client = guarded_async_client(settings, what="source_url", timeout_s=NETWORK_TIMEOUT_S,
                                  follow_redirects=True, max_redirects=MAX_REDIRECTS)
    try:
        async with asyncio.timeout(settings.source_url_timeout_s), client:
            return await _download(client, url, dest, settings.source_url_max_bytes)
    except TimeoutError as e:
        raise BadInputError(f"source_url took longer than {settings.source_url_timeout_s:.0f}"
                            " s to download") from e
    except httpx.TooManyRedirects as e:
        raise BadInputError(f"source_url redirected more than {MAX_REDIRECTS} times") from e
    except httpx.HTTPError as e:
        raise BadInputError(f"source_url could not be downloaded: "
                            f"{type(e).__name__}: {e}") from e


async def _download(client: httpx.AsyncClient, url: str, dest: Path, limit_bytes: int) -> str:
    async with client.stream("GET", url) as resp:
        if resp.status_code != 200:
            raise BadInputError(f"source_url answered HTTP {resp.status_code}")
        length = resp.headers.get("content-length", "")
        declared = int(length) if length.isdigit() else 0
        if declared > limit_bytes:
            raise UploadTooLargeError(
                f"source_url is {declared} bytes; the limit is {limit_bytes}")
        got = 0
        with dest.open("wb") as f:
            async for chunk in resp.aiter_bytes(CHUNK_BYTES):
                got += len(chunk)
                if got > limit_bytes:
                    raise UploadTooLargeError(f"source_url sent more than {limit_bytes} bytes")
                f.write(chunk)
        return resp.headers.get("content-type", "").split(";")[0].strip()
