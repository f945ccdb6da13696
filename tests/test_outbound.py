"""The outbound guard (`dubcore.outbound`): ``source_url`` (through the API) and
``callback_url`` (through the webhook activity) to every non-public address class are
refused at request time, at delivery, after a redirect and after a DNS answer that
changes; an allowed network works; the connection goes to the address that was checked,
with the original host name's TLS check."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.account import AccountActivities
from api.app import create_app
from api.fetch import fetch
from dubcore import accounts, outbound
from dubcore.contracts import WEBHOOK_TASK_QUEUE, WORKFLOW_TASK_QUEUE, WebhookInput
from dubcore.db import WebhookDelivery
from dubcore.errors import InvalidRequestError
from dubcore.outbound import GuardedTransport, check_url, guarded_async_client, guarded_client
from dubcore.settings import Settings
from dubcore.storage import make_store
from tests.conftest import tenant_sessions
from worker.__main__ import build_workers

LOOPBACK_ONLY = ["127.0.0.0/8"]
METADATA = "169.254.169.254"

#: One host per non-public address class, as a URL authority (IPv6 in brackets).
REFUSED_HOSTS = [
    "127.0.0.1", "127.1.2.3", "localhost", "2130706433", "0x7f000001", "0", "0.0.0.0",
    "[::1]", "[::]", "[::ffff:127.0.0.1]", "10.1.2.3", "172.16.5.4", "192.168.1.1",
    "100.64.0.1", METADATA, "[fe80::1]", "[fc00::1]", "224.0.0.1", "[ff02::1]",
    "240.0.0.1", "198.18.0.1", "192.0.2.7", "255.255.255.255",
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of the metadata address
    "[2002:a9fe:a9fe::]",  # 6to4 of the metadata address
]


# --- local servers -------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    """A real HTTP(S) server on 127.0.0.1: ``routes`` maps a path to (status, headers,
    body); every request is recorded, and the TLS server name each connection asked for."""

    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append(Seen(self.command, self.path, dict(self.headers)))
                code, headers, body = outer.routes.get(self.path, (404, {}, b""))
                self.send_response(code)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self.tls.sni_callback = lambda _sock, name, _ctx: outer.server_names.append(name)
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


class Answers:
    """A resolver seam: answers ``host`` with the next list in ``sequence`` (the last one
    repeats), any other host from the system; counts the questions about ``host``."""

    def __init__(self, host: str, *sequence: list[str]) -> None:
        self.host, self.sequence, self.asked = host, sequence, 0

    def __call__(self, host: str, port: int) -> Sequence[str]:
        if host != self.host:
            return outbound.system_resolve(host, port)
        self.asked += 1
        return self.sequence[min(self.asked, len(self.sequence)) - 1]


def _certificate(host: str) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) and its key (PEM) for ``host``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _tls_pair(tmp_path: Path, host: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context presenting a certificate for ``host``, client context trusting it)."""
    cert_pem, key_pem = _certificate(host)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_ctx = ssl.create_default_context(cadata=cert_pem.decode())
    return server_ctx, client_ctx


# --- the check itself ----------------------------------------------------------------------


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_check_url_refuses_every_non_public_address_class(host: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        check_url(f"http://{host}/hook", Settings(), what="callback_url")
    message = refused.value.message
    assert message.startswith("callback_url host ") and "public addresses only" in message


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///x",
                                 "gopher://127.0.0.1/"])
def test_check_url_refuses_other_schemes(url: str) -> None:
    with pytest.raises(InvalidRequestError, match="source_url must be an http"):
        check_url(url, Settings(), what="source_url")


def test_public_and_allowed_addresses_pass_and_every_answer_counts() -> None:
    public = Answers("cdn.example", ["93.184.216.34", "2606:2800:220:1::1"])
    check_url("https://cdn.example/v.mp4", Settings(), what="source_url", resolver=public)
    check_url("http://127.0.0.1:8080/x", Settings(outbound_allowed_networks=LOOPBACK_ONLY),
              what="source_url")
    # One private answer among public ones is enough to refuse.
    mixed = Answers("cdn.example", ["93.184.216.34", "10.0.0.7"])
    with pytest.raises(InvalidRequestError, match=r"'cdn\.example' resolves to 10\.0\.0\.7"):
        check_url("https://cdn.example/v.mp4", Settings(), what="source_url", resolver=mixed)
    # An allowed IPv4 network does not open the IPv6 loopback, nor other private ranges.
    with pytest.raises(InvalidRequestError, match="::1"):
        check_url("http://[::1]/", Settings(outbound_allowed_networks=LOOPBACK_ONLY),
                  what="source_url")
    with pytest.raises(InvalidRequestError, match=r"169\.254\.169\.254 \(link-local\)"):
        check_url(f"http://{METADATA}/", Settings(outbound_allowed_networks=LOOPBACK_ONLY),
                  what="source_url")


def test_refusal_reasons_unwrap_embedded_ipv4() -> None:
    def why(text: str) -> str | None:
        return outbound.refusal(ipaddress.ip_address(text), [])

    assert why("8.8.8.8") is None and why("2606:4700::1111") is None
    assert why("::ffff:127.0.0.1") == "loopback"
    assert why("2002:a9fe:a9fe::") == "it embeds 169.254.169.254, link-local"
    assert why("2002:0808:0808::") is None  # 6to4 of a public address
    assert why("100.64.0.1") == "shared address space (carrier-grade NAT)"
    assert why("64:ff9b::a9fe:a9fe") is not None


def test_unresolvable_host_and_bad_allowed_network() -> None:
    nowhere = Answers("nowhere.example", [])
    with pytest.raises(InvalidRequestError, match="does not resolve"):
        check_url("http://nowhere.example/", Settings(), what="callback_url", resolver=nowhere)
    with pytest.raises(ValueError, match="not-a-network"):
        Settings(outbound_allowed_networks=["not-a-network"])


# --- the connection goes to the checked address --------------------------------------------


def test_connection_uses_the_checked_address_with_the_original_host(server: Server) -> None:
    """``pinned.test`` exists only in the seam: the request can only arrive if the client
    connected to the address the guard checked, and the server sees the original Host."""
    server.routes["/hello"] = (200, {}, b"hi")
    answers = Answers("pinned.test", ["127.0.0.1"])
    settings = Settings(outbound_allowed_networks=LOOPBACK_ONLY)
    with guarded_client(settings, timeout_s=5, resolver=answers) as http:
        resp = http.get(server.url("/hello", host="pinned.test"))
    assert (resp.status_code, resp.content) == (200, b"hi")
    assert answers.asked == 1
    assert server.seen[0].headers["Host"] == f"pinned.test:{server.port}"
    assert str(resp.request.url) == server.url("/hello", host="pinned.test")


def test_a_dns_answer_that_changes_never_moves_the_connection(server: Server) -> None:
    """First answer allowed, every later one private: each request resolves once and goes
    where that answer pointed; a later hop gets the new answer, and it is refused."""
    server.routes["/a"] = (200, {}, b"first")
    server.routes["/jump"] = (302, {"Location": "/a"}, b"")
    answers = Answers("rebind.test", ["127.0.0.1"], [METADATA])
    settings = Settings(outbound_allowed_networks=LOOPBACK_ONLY)
    with guarded_client(settings, timeout_s=5, resolver=answers, what="source_url") as http:
        assert http.get(server.url("/a", host="rebind.test")).content == b"first"
        assert answers.asked == 1
        with pytest.raises(InvalidRequestError, match=r"169\.254\.169\.254"):
            http.get(server.url("/a", host="rebind.test"))
    assert [s.path for s in server.seen] == ["/a"]


def test_a_passing_first_answer_does_not_let_a_refused_second_one_in(server: Server) -> None:
    """The old weakness: check with one answer, connect with another. The check sees an
    allowed address where nothing listens (127.0.0.2); the system would next answer
    127.0.0.1, where our server listens but which is not allowed: the connection goes to
    the address it checked and fails, and nothing reaches the server."""
    server.routes["/hook"] = (204, {}, b"")
    answers = Answers("flip.test", ["127.0.0.2"], ["127.0.0.1"])
    settings = Settings(outbound_allowed_networks=["127.0.0.2/32"])
    with guarded_client(settings, timeout_s=2, resolver=answers) as http, \
            pytest.raises(httpx.ConnectError):
        http.post(server.url("/hook", host="flip.test"), content=b"{}")
    assert answers.asked == 1 and server.seen == []


def test_https_keeps_the_host_name_for_sni_and_the_certificate(tmp_path: Path) -> None:
    server_ctx, client_ctx = _tls_pair(tmp_path, "pinned.test")
    srv = Server(routes={"/x": (200, {}, b"secure")}, tls=server_ctx)
    try:
        answers = Answers("pinned.test", ["127.0.0.1"])
        settings = Settings(outbound_allowed_networks=LOOPBACK_ONLY)
        transport = GuardedTransport(settings, what="source_url", resolver=answers,
                                     verify=client_ctx)
        with httpx.Client(transport=transport) as http:
            resp = http.get(srv.url("/x", host="pinned.test"))
        assert (resp.status_code, resp.content) == (200, b"secure")
        assert srv.server_names == ["pinned.test"]
        # The certificate is still checked against the original name: another name that
        # resolves to the same address does not verify.
        other = Answers("other.test", ["127.0.0.1"])
        transport = GuardedTransport(settings, what="source_url", resolver=other,
                                     verify=client_ctx)
        with httpx.Client(transport=transport) as http, \
                pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            http.get(srv.url("/x", host="other.test"))
    finally:
        srv.close()


async def test_async_client_guards_redirect_hops(server: Server) -> None:
    server.routes["/ok"] = (200, {}, b"fine")
    server.routes["/go"] = (302, {"Location": "/ok"}, b"")
    server.routes["/meta"] = (302, {"Location": f"http://{METADATA}/latest/meta-data"}, b"")
    settings = Settings(outbound_allowed_networks=LOOPBACK_ONLY)
    async with guarded_async_client(settings, timeout_s=5, follow_redirects=True) as http:
        assert (await http.get(server.url("/go"))).content == b"fine"
        with pytest.raises(InvalidRequestError, match=r"169\.254\.169\.254"):
            await http.get(server.url("/meta"))


# --- source_url through the API -------------------------------------------------------------


def _api(tmp_path: Path, **settings: object) -> TestClient:
    app = create_app(Settings.model_validate({
        "data_dir": tmp_path, "public_base_url": "http://testserver",
        "temporal_address": "127.0.0.1:1", "signing_secret": secrets.token_urlsafe(32),
        **settings}))
    with app.state.services.sessions() as s:
        key = accounts.create_tenant(s, "acme", minutes=30)[1]
    return TestClient(app, headers={"X-API-Key": key})


def _refused(client: TestClient, url: str) -> str:
    resp = client.post("/v1/dubbing/jobs", json={"source_url": url,
                                                 "target_language": "pt-BR"})
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"] == "InvalidRequestError"
    return str(body["message"])


def test_source_url_to_each_non_public_class_is_refused_at_request_time(
        tmp_path: Path, server: Server) -> None:
    server.routes["/v.mp4"] = (200, {"Content-Type": "video/mp4"}, b"x" * 100)
    with _api(tmp_path) as client:
        for host in REFUSED_HOSTS:
            message = _refused(client, f"http://{host}:{server.port}/v.mp4")
            assert message.startswith("source_url host ") and "resolves to" in message, host
    assert server.seen == []  # the loopback forms point at it: none got through


@pytest.mark.parametrize("target", [
    f"http://{METADATA}/latest/meta-data/", "http://10.0.0.1/v.mp4", "http://[::1]/v.mp4",
    "http://192.168.0.1:8080/v.mp4", "http://[::ffff:a9fe:a9fe]/v.mp4"])
def test_source_url_redirected_to_a_refused_address_is_refused(
        tmp_path: Path, server: Server, target: str) -> None:
    server.routes["/v.mp4"] = (302, {"Location": target}, b"")
    with _api(tmp_path, outbound_allowed_networks=LOOPBACK_ONLY) as client:
        message = _refused(client, server.url("/v.mp4"))
    assert "resolves to" in message and "public addresses only" in message
    assert [s.path for s in server.seen] == ["/v.mp4"]


def test_source_url_whose_dns_answer_changes_is_refused(
        tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host first resolves to the allowed server, which redirects to the same host:
    the next answer is the metadata address, and that hop is refused."""
    server.routes["/v.mp4"] = (302, {"Location": "/again.mp4"}, b"")
    answers = Answers("media.test", ["127.0.0.1"], [METADATA])
    monkeypatch.setattr(outbound, "resolve", answers)
    with _api(tmp_path, outbound_allowed_networks=LOOPBACK_ONLY) as client:
        message = _refused(client, server.url("/v.mp4", host="media.test"))
    assert "'media.test' resolves to 169.254.169.254" in message
    assert [s.path for s in server.seen] == ["/v.mp4"] and answers.asked == 2


async def test_fetch_from_an_allowed_network_follows_redirects(tmp_path: Path,
                                                               server: Server) -> None:
    server.routes["/v.mp4"] = (200, {"Content-Type": "video/mp4; x=1"}, b"\0" * 4096)
    server.routes["/start"] = (301, {"Location": "/v.mp4"}, b"")
    dest = tmp_path / "source"
    settings = Settings(outbound_allowed_networks=LOOPBACK_ONLY)
    assert await fetch(server.url("/start"), dest, settings) == "video/mp4"
    assert dest.read_bytes() == b"\0" * 4096
    with pytest.raises(InvalidRequestError, match="loopback"):
        await fetch(server.url("/start"), dest, Settings())


# --- callback_url at delivery ----------------------------------------------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from tenant_sessions(tmp_path, minutes=10)


def _deliver(sessions: sessionmaker[Session], settings: Settings, url: str,
             resolver: outbound.Resolver | None = None,
             delivery_id: str = "d1") -> WebhookDelivery:
    """Run one delivery attempt in an activity environment; the refusal must be final
    (non-retryable). Returns the delivery row."""
    account = AccountActivities(sessions, settings, resolver=resolver)
    inp = WebhookInput(delivery_id=delivery_id, tenant="acme", job_id="j1",
                       event="job.completed", url=url, payload={"job_id": "j1"},
                       max_attempts=8)
    with pytest.raises(ApplicationError) as failed:
        ActivityEnvironment().run(account.deliver_webhook, inp)
    assert failed.value.type == "InvalidRequestError" and failed.value.non_retryable
    with sessions() as s:
        row = s.get(WebhookDelivery, delivery_id)
        assert row is not None
        s.expunge(row)
    return row


def test_callback_url_to_each_non_public_class_is_refused_at_delivery(
        sessions: sessionmaker[Session], server: Server) -> None:
    server.routes["/hook"] = (204, {}, b"")
    for i, host in enumerate(REFUSED_HOSTS):
        row = _deliver(sessions, Settings(), f"http://{host}:{server.port}/hook", None, f"d{i}")
        assert (row.state, row.attempts, row.last_status_code) == ("failed", 1, None), host
        assert row.last_error is not None and row.last_error.startswith("callback_url host")
        assert "resolves to" in row.last_error, host
    assert server.seen == []


def test_callback_redirect_to_metadata_is_not_followed(sessions: sessionmaker[Session],
                                                        server: Server) -> None:
    """Webhooks never follow redirects: the allowed receiver's 302 is its answer."""
    server.routes["/hook"] = (302, {"Location": f"http://{METADATA}/latest/"}, b"")
    answers = Answers(METADATA, [METADATA])
    account = AccountActivities(sessions, Settings(outbound_allowed_networks=LOOPBACK_ONLY),
                                resolver=answers)
    inp = WebhookInput(delivery_id="r1", tenant="acme", job_id="j1", event="job.completed",
                       url=server.url("/hook"), payload={}, max_attempts=1)
    with pytest.raises(ApplicationError, match="HTTP 302"):
        ActivityEnvironment().run(account.deliver_webhook, inp)
    assert answers.asked == 0 and [s.path for s in server.seen] == ["/hook"]
    # The guard's clients check every hop when they do follow (source_url does).
    with guarded_client(Settings(outbound_allowed_networks=LOOPBACK_ONLY), timeout_s=5,
                        follow_redirects=True, what="callback_url") as http, \
            pytest.raises(InvalidRequestError, match=r"callback_url host '169\.254\.169\.254'"):
        http.post(server.url("/hook"), content=b"{}")


def test_callback_whose_dns_answer_changes_after_the_door_is_refused_at_delivery(
        sessions: sessionmaker[Session], server: Server) -> None:
    """Checked at the door (first answer: the allowed receiver), the name later answers a
    private address: the delivery attempt checks again, refuses, and records why."""
    server.routes["/hook"] = (204, {}, b"")
    answers = Answers("hooks.test", ["127.0.0.1"], ["10.20.30.40"])
    settings = Settings(outbound_allowed_networks=LOOPBACK_ONLY)
    url = server.url("/hook", host="hooks.test")
    check_url(url, settings, what="callback_url", resolver=answers)
    row = _deliver(sessions, settings, url, answers)
    assert row.state == "failed" and row.attempts == 1
    assert row.last_error == ("callback_url host 'hooks.test' resolves to 10.20.30.40 "
                              "(private), a private or reserved address; this service "
                              "connects to public addresses only")
    assert server.seen == [] and answers.asked == 2


def test_callback_to_an_allowed_network_is_delivered_to_the_checked_address(
        sessions: sessionmaker[Session], server: Server) -> None:
    server.routes["/hook"] = (204, {}, b"")
    answers = Answers("hooks.test", ["127.0.0.1"])
    account = AccountActivities(sessions, Settings(outbound_allowed_networks=LOOPBACK_ONLY),
                                resolver=answers)
    inp = WebhookInput(delivery_id="ok1", tenant="acme", job_id="j1", event="job.completed",
                       url=server.url("/hook", host="hooks.test"), payload={"a": 1})
    result = ActivityEnvironment().run(account.deliver_webhook, inp)
    assert result.status_code == 204
    assert [(s.method, s.path) for s in server.seen] == [("POST", "/hook")]
    assert server.seen[0].headers["Host"] == f"hooks.test:{server.port}"
    assert "X-OpenDub-Signature" in server.seen[0].headers


# --- webhooks isolated --------------------------------------------------------------------


async def test_webhooks_have_their_own_queue_and_threads(
        tmp_path: Path, time_skipping_env: WorkflowEnvironment) -> None:
    """build_workers serves deliveries on `WEBHOOK_TASK_QUEUE` with their own executor,
    so a receiver that hangs cannot hold the pool the stages and settlements use."""
    settings = Settings(data_dir=tmp_path, worker_stages=[], webhook_max_concurrent=3,
                        signing_secret=secrets.token_urlsafe(32))
    # A client of its own: the workers built here are never run, and the SDK keeps one
    # worker per task queue and client, which the other tests' webhook workers need.
    client = await Client.connect(time_skipping_env.client.service_client.config.target_host)
    with ThreadPoolExecutor(2) as shared:
        workers = build_workers(client, settings, make_store(settings), shared)
        by_queue = {w.task_queue: w.config() for w in workers}
        assert set(by_queue) == {WORKFLOW_TASK_QUEUE, WEBHOOK_TASK_QUEUE}
        hooks, flows = by_queue[WEBHOOK_TASK_QUEUE], by_queue[WORKFLOW_TASK_QUEUE]
        names = [getattr(a, "__name__", "") for a in hooks.get("activities", [])]
        assert names == ["deliver_webhook"]
        assert "deliver_webhook" not in [getattr(a, "__name__", "")
                                         for a in flows.get("activities", [])]
        executor = hooks.get("activity_executor")
        assert isinstance(executor, ThreadPoolExecutor) and executor is not shared
        assert executor._max_workers == 3
        assert hooks.get("max_concurrent_activities") == 3
        executor.shutdown()
