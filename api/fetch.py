"""Fetching a source from a URL for ``source_url``, with the guards a public service needs:
http(s) only, no private / loopback / link-local / reserved destination (checked on every
redirect hop) unless ``DUB_ALLOW_PRIVATE_SOURCE_URLS``, a size and a time limit."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from dubcore.errors import BadInputError, InvalidRequestError, UploadTooLargeError
from dubcore.settings import Settings

MAX_REDIRECTS = 5


async def check_destination(url: str, allow_private: bool) -> None:
    """Refuse a URL that is not http(s), or whose host resolves to an address a server-side
    fetch must not reach."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError("source_url must be an http:// or https:// URL")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InvalidRequestError(f"source_url host {parts.hostname!r} does not resolve") from e
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                or addr.is_reserved or addr.is_unspecified):
            raise InvalidRequestError(
                f"source_url host {parts.hostname!r} resolves to {addr}, a private or "
                "reserved address; this service fetches public URLs only")


async def fetch(url: str, dest: Path, settings: Settings) -> str:
    """Download ``url`` into ``dest``; returns the content type the server declared."""
    deadline = time.monotonic() + settings.source_url_timeout_s
    async with httpx.AsyncClient(follow_redirects=False,
                                 timeout=httpx.Timeout(30.0)) as client:
        for _ in range(MAX_REDIRECTS + 1):
            await check_destination(url, settings.allow_private_source_urls)
            async with client.stream("GET", url) as resp:
                if resp.is_redirect and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise BadInputError(f"source_url answered HTTP {resp.status_code}")
                declared = int(resp.headers.get("content-length") or 0)
                if declared > settings.source_url_max_bytes:
                    raise UploadTooLargeError(
                        f"source_url is {declared} bytes; the limit is "
                        f"{settings.source_url_max_bytes}")
                got = 0
                with dest.open("wb") as f:
                    async for chunk in resp.aiter_bytes(1024 * 1024):
                        got += len(chunk)
                        if got > settings.source_url_max_bytes:
                            raise UploadTooLargeError(
                                f"source_url sent more than {settings.source_url_max_bytes} "
                                "bytes")
                        if time.monotonic() > deadline:
                            raise BadInputError(
                                f"source_url took longer than {settings.source_url_timeout_s:.0f}"
                                " s to download")
                        f.write(chunk)
                return resp.headers.get("content-type", "").split(";")[0].strip()
    raise BadInputError(f"source_url redirected more than {MAX_REDIRECTS} times")
