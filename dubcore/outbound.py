"""The one guard for every outbound HTTP request the service makes (``source_url``
downloads, webhook deliveries).

Only ``http``/``https`` to globally routable addresses passes, unless the address falls in
a network the operator allows (``DUB_OUTBOUND_ALLOWED_NETWORKS``, e.g. ``["10.0.0.0/8"]``).
Every address the host resolves to must pass; IPv6 forms that embed an IPv4 address
(IPv4-mapped, 6to4, Teredo, NAT64) are unwrapped and the embedded address is checked too.

:func:`check_url` is the check alone (used at the door, before a job starts). The clients
from :func:`guarded_client` / :func:`guarded_async_client` run it for every request they
send, so every redirect hop is checked, and connect to the very address that was checked:
the host is resolved once, and the request goes to that IP with the ``Host`` header and
the TLS server name (SNI and certificate check) of the original host name, so a DNS answer
that changes between the check and the connection (rebinding) cannot redirect it.

DNS goes through :data:`resolve` (looked up at call time) unless a ``resolver`` is passed:
the seam tests use to give answers that change between calls.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread
import httpx

from dubcore.errors import InvalidRequestError
from dubcore.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses`` (textual IPv4 / IPv6), as ``getaddrinfo`` answers."""

ALLOWED_SCHEMES = ("http", "https")
#: RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 destination.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
#: RFC 6598 shared address space (carrier-grade NAT), named in refusals.
SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for ``host`` (unique, in its order)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


resolve: Resolver = system_resolve
"""The resolver the guard uses when none is passed (a seam: tests replace it)."""


def allowed_networks(settings: Settings) -> list[IPNetwork]:
    """``settings.outbound_allowed_networks`` parsed; a bad entry is a configuration error
    raised here, where the guard is first used."""
    return [ipaddress.ip_network(n, strict=False) for n in settings.outbound_allowed_networks]


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = []
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)
    if addr in NAT64_PREFIX:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFF_FFFF))
    return found


def _why_not_public(addr: IPAddress) -> str | None:
    """Why a connection to ``addr`` is refused, or ``None`` when it is a public address."""
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if isinstance(addr, ipaddress.IPv4Address) and addr in SHARED_ADDRESS_SPACE:
        return "shared address space (carrier-grade NAT)"
    if addr.is_private:
        return "private"
    if addr.is_reserved:
        return "reserved"
    if not addr.is_global:
        return "not globally routable"
    return None


def refusal(addr: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why ``addr`` may not be reached (``None``: it may). An IPv4-mapped IPv6 address is
    its IPv4 address; other forms that embed an IPv4 address pass only if both do."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr.version == net.version and addr in net for net in allowed):
        return None
    why = _why_not_public(addr)
    if why is not None:
        return why
    if isinstance(addr, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(addr):
            inner_why = refusal(inner, allowed)
            if inner_why is not None:
                return f"it embeds {inner}, {inner_why}"
    return None


def _parse_address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")


def checked_addresses(url: httpx.URL, settings: Settings, *, what: str,
                      resolver: Resolver | None = None) -> list[IPAddress]:
    """Resolve ``url``'s host once and return its addresses, all of which may be reached.

    Raises `InvalidRequestError` naming ``what``, the host and the refused address when the
    guard refuses, and `OSError` (``socket.gaierror``) when the host does not resolve: a
    network failure, possibly transient, that callers map as such."""
    if url.scheme not in ALLOWED_SCHEMES or not url.raw_host:
        raise InvalidRequestError(f"{what} must be an http:// or https:// URL with a host")
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    answers = (resolver or resolve)(host, port)
    if not answers:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {host!r}")
    allowed = allowed_networks(settings)
    addresses = [_parse_address(a) for a in answers]
    for addr in addresses:
        why = refusal(addr, allowed)
        if why is not None:
            raise InvalidRequestError(
                f"{what} host {host!r} resolves to {addr} ({why}), a private or reserved "
                "address; this service connects to public addresses only")
    return addresses


def check_url(url: str, settings: Settings, *, what: str,
              resolver: Resolver | None = None) -> None:
    """Refuse (`InvalidRequestError`) a URL the service must not connect to: not
    http(s), a host that does not resolve, or any resolved address that is not public
    (outside the operator's allowed networks). Resolves DNS: blocking."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise InvalidRequestError(f"{what} is not a valid URL: {e}") from e
    try:
        checked_addresses(parsed, settings, what=what, resolver=resolver)
    except OSError as e:
        raise InvalidRequestError(f"{what} host {parsed.host!r} does not resolve: {e}") from e


def _pinned(request: httpx.Request, addr: IPAddress) -> httpx.Request:
    """``request`` sent to ``addr``: same headers (``Host`` included), body and
    extensions, with the TLS server name of the original host (SNI and certificate)."""
    extensions = dict(request.extensions)
    if request.url.scheme == "https":
        extensions.setdefault("sni_hostname", request.url.raw_host.decode("ascii"))
    return httpx.Request(request.method, request.url.copy_with(host=str(addr)),
                         headers=request.headers, stream=request.stream,
                         extensions=extensions)


def _checked_or_connect_error(request: httpx.Request, settings: Settings, what: str,
                              resolver: Resolver | None) -> list[IPAddress]:
    """`checked_addresses` for a transport: a host that does not resolve is the
    `httpx.ConnectError` any transport raises for it."""
    try:
        return checked_addresses(request.url, settings, what=what, resolver=resolver)
    except OSError as e:
        raise httpx.ConnectError(f"{what} host {request.url.host!r} does not resolve: {e}",
                                 request=request) from e


# Keep-alive off: the pool is keyed by the IP connected to, so a kept connection could
# otherwise carry a request for another host name served at that IP without its own TLS
# check. Our outbound calls are one request (plus redirects) per client anyway.
_NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


class GuardedTransport(httpx.HTTPTransport):
    """An `httpx.HTTPTransport` that checks each request's URL, resolving its host once,
    and connects to a checked address (the next one if a connection fails)."""

    def __init__(self, settings: Settings, *, what: str, resolver: Resolver | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("limits", _NO_KEEPALIVE)
        super().__init__(trust_env=False, **kwargs)
        self._settings, self._what, self._resolver = settings, what, resolver

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        addresses = _checked_or_connect_error(request, self._settings, self._what,
                                              self._resolver)
        for addr in addresses[:-1]:
            try:
                return super().handle_request(_pinned(request, addr))
            except httpx.ConnectError:
                continue
        return super().handle_request(_pinned(request, addresses[-1]))


class AsyncGuardedTransport(httpx.AsyncHTTPTransport):
    """The async twin of `GuardedTransport` (DNS is resolved in a worker thread)."""

    def __init__(self, settings: Settings, *, what: str, resolver: Resolver | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("limits", _NO_KEEPALIVE)
        super().__init__(trust_env=False, **kwargs)
        self._settings, self._what, self._resolver = settings, what, resolver

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        addresses = await anyio.to_thread.run_sync(
            _checked_or_connect_error, request, self._settings, self._what, self._resolver)
        for addr in addresses[:-1]:
            try:
                return await super().handle_async_request(_pinned(request, addr))
            except httpx.ConnectError:
                continue
        return await super().handle_async_request(_pinned(request, addresses[-1]))


def guarded_client(settings: Settings, *, timeout_s: float, what: str = "outbound URL",
                   follow_redirects: bool = False, max_redirects: int = 5,
                   resolver: Resolver | None = None) -> httpx.Client:
    """An `httpx.Client` whose every request (and redirect hop) passes the guard and goes
    to the address that was checked. Proxies from the environment are not used."""
    return httpx.Client(transport=GuardedTransport(settings, what=what, resolver=resolver),
                        timeout=httpx.Timeout(timeout_s), follow_redirects=follow_redirects,
                        max_redirects=max_redirects, trust_env=False)


def guarded_async_client(settings: Settings, *, timeout_s: float,
                         what: str = "outbound URL", follow_redirects: bool = False,
                         max_redirects: int = 5,
                         resolver: Resolver | None = None) -> httpx.AsyncClient:
    """The async twin of :func:`guarded_client`."""
    return httpx.AsyncClient(
        transport=AsyncGuardedTransport(settings, what=what, resolver=resolver),
        timeout=httpx.Timeout(timeout_s), follow_redirects=follow_redirects,
        max_redirects=max_redirects, trust_env=False)
