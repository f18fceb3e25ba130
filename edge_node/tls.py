"""TLS on the three links: devices -> edge, edge -> central, and central's own listener.

Servers: :class:`ServerTLS` holds the SSL context built from a certificate, its key and, for
client certificates, the CA that signs them. :meth:`ServerTLS.reload` builds a new context from
the files (SIGHUP): new connections get it, open ones keep theirs, none is dropped. A file that
does not load leaves the old context in place and names the file.

:func:`serve` is ``hypercorn.trio.serve`` with listeners of our own: each TLS connection's
verified client certificate is recorded while the connection is open, so the app reads it with
:meth:`ServerTLS.peer` (hypercorn does not pass it in the ASGI scope). A plain-HTTP listener can
run beside the TLS one (legacy devices).

Client: :func:`client_context` (a private CA, a client certificate) and :func:`tls_problem`,
which turns a failed connection into the certificate problem it was, with what to set.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from .metrics import Registry

log = logging.getLogger("fleet_edge.tls")

CLIENT_CERT_MODES = ("off", "optional", "required")
_VERIFY = {"off": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TLSError(Exception):
    """A certificate, key or CA file that cannot be used; ``key`` names its setting, the
    message the file and what is wrong with it."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.reason = message
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class CertInfo:
    """What the status page, ``/metrics`` and the expiry warning show of a certificate."""

    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before_s: float
    not_after_s: float
    sha256: str

    def to_json(self, now_s: float) -> dict[str, Any]:
        return {"subject": self.subject, "issuer": self.issuer, "names": list(self.names),
                "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.not_after_s)),
                "expires_in_days": round((self.not_after_s - now_s) / 86400, 1),
                "sha256": self.sha256}


def read_cert(path: str, setting: str = "cert_file") -> CertInfo:
    """The first certificate of the PEM file ``path`` (the leaf of a chain)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSError(setting, f"cannot read {path}: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError):
        raise TLSError(setting, f"{path} holds no PEM certificate") from None
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [str(v) for v in san.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
        names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return CertInfo(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                    names=tuple(dict.fromkeys(str(n) for n in names)),
                    not_before_s=cert.not_valid_before_utc.timestamp(),
                    not_after_s=cert.not_valid_after_utc.timestamp(),
                    sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest())


# -- servers -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSFiles:
    """A listener's TLS settings: its certificate chain and key (PEM), and for client
    certificates the CA file that signs them and whether one is ``optional`` or ``required``."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""
    client_certs: str = "off"
    # the names of the settings, for errors: (certificate, key, client CA, client_certs)
    settings: tuple[str, str, str, str] = ("tls.cert_file", "tls.key_file",
                                           "tls.client_ca_file", "tls.client_certs")


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A server context from ``files``; :class:`TLSError` names a file that does not load."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    cert_s, key_s, ca_s, _ = files.settings
    for setting, path in ((cert_s, files.cert_file), (key_s, files.key_file),
                          (ca_s, files.client_ca_file)):
        if path and not Path(path).is_file():
            raise TLSError(setting, f"{path} does not exist or is not a file")
    read_cert(files.cert_file, cert_s)
    try:
        ctx.load_cert_chain(files.cert_file, files.key_file)
    except ssl.SSLError as exc:
        raise TLSError(key_s, f"{files.key_file} is not a PEM key of the certificate in "
                              f"{files.cert_file} ({exc.reason or exc})") from None
    except OSError as exc:
        raise TLSError(key_s, f"cannot read {files.key_file}: {exc.strerror}") from None
    if files.client_certs != "off":
        try:
            ctx.load_verify_locations(files.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise TLSError(ca_s, f"{files.client_ca_file} holds no usable CA certificate "
                                 f"({getattr(exc, 'reason', None) or exc})") from None
    ctx.verify_mode = _VERIFY[files.client_certs]
    return ctx


@dataclass(frozen=True)
class Peer:
    """A verified client certificate: its subject's common name and every name it carries."""

    common_name: str
    names: tuple[str, ...]
    subject: str

    @property
    def identity(self) -> str:
        """Who the certificate is for: its common name, else its first DNS or URI name."""
        return self.common_name or (self.names[0] if self.names else "")


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}


def _peer_of(cert: dict[str, Any]) -> Peer:
    rdns = [dict(rdn) for rdn in cert.get("subject", ())]
    cn = next((r["commonName"] for r in rdns if "commonName" in r), "")
    names = [cn] if cn else []
    names += [v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "URI")]
    subject = ",".join(f"{_SHORT.get(k, k)}={v}" for r in rdns for k, v in r.items())
    return Peer(common_name=cn, names=tuple(dict.fromkeys(names)), subject=subject)


@dataclass
class ServerTLS:
    """A listener's current TLS context, its certificate's details and the verified client
    certificates of its open connections."""

    files: TLSFiles
    context: ssl.SSLContext = field(init=False)
    cert: CertInfo = field(init=False)
    loaded_s: float = 0.0
    on_failure: Callable[[str], None] | None = None  # a failed handshake's reason
    _peers: dict[tuple[Any, ...], Peer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.context = server_context(self.files)
        self.cert = read_cert(self.files.cert_file, self.files.settings[0])
        self.loaded_s = time.time()

    @property
    def client_certs(self) -> str:
        return self.files.client_certs

    def reload(self, files: TLSFiles | None = None) -> bool:
        """Build a new context from the files (or ``files``); True when the certificate
        changed. Raises :class:`TLSError`, keeping the old context, if they do not load."""
        files = files or self.files
        if files.client_certs != self.files.client_certs:
            raise TLSError(files.settings[3], "a change takes a restart")
        ctx, cert = server_context(files), read_cert(files.cert_file, files.settings[0])
        changed = cert.sha256 != self.cert.sha256
        self.files, self.context, self.cert, self.loaded_s = files, ctx, cert, time.time()
        return changed

    def peer(self, scope: Mapping[str, Any]) -> Peer | None:
        """The verified client certificate of the connection ``scope`` came on, if any."""
        if scope.get("scheme") not in ("https", "wss"):
            return None
        server, client = scope.get("server"), scope.get("client")
        if not server or not client:
            return None
        return self._peers.get((tuple(server)[:2], tuple(client)[:2]))

    def _failed(self, reason: str) -> None:
        if self.on_failure is not None:
            self.on_failure(reason)

    def register_metrics(self, reg: Registry, listener: str) -> None:
        """``tls_handshake_failures_total{listener,reason}`` and the certificate's expiry."""
        m = reg.counter("tls_handshake_failures_total", "TLS handshakes that failed, by "
                        "listener and reason (e.g. tlsv1 alert unknown ca: the client does not "
                        "trust our CA; peer did not return a certificate).",
                        ("listener", "reason"))
        self.on_failure = lambda reason: m.inc(1, listener, reason)
        reg.gauge("tls_certificate_expiry_timestamp_seconds", "When the listener's "
                  "certificate expires (its notAfter).", ("listener",),
                  callback=lambda: {(listener,): self.cert.not_after_s})


def _reason(exc: BaseException) -> str:
    """A short label for a failed handshake (metrics): the SSL error's reason, lower case."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return (cause.reason or "ssl_error").lower()
        cause = cause.__cause__ or cause.__context__
    return "closed"


class _PeerStream(trio.abc.Stream):
    """An :class:`trio.SSLStream` that records its verified client certificate in the
    listener's table once the handshake is done, and forgets it when closed."""

    def __init__(self, inner: trio.SSLStream[trio.SocketStream], tls: ServerTLS) -> None:
        self._inner = inner
        self._tls = tls
        self._key: tuple[Any, ...] | None = None

    async def do_handshake(self) -> None:
        try:
            await self._inner.do_handshake()
        except trio.BrokenResourceError as exc:
            self._tls._failed(_reason(exc))
            log.debug("TLS handshake failed: %s", _reason(exc))
            await self._send_alert()
            raise
        cert = self._inner.getpeercert()
        if cert and self._key is None:
            sock = self._inner.transport_stream.socket
            self._key = (tuple(sock.getsockname())[:2], tuple(sock.getpeername())[:2])
            self._tls._peers[self._key] = _peer_of(cert)

    async def _send_alert(self) -> None:
        """Send the TLS alert OpenSSL wrote for a failed handshake (trio keeps it unsent), so
        the client learns why (e.g. "certificate required"), then close gracefully: read what
        the client still sends (its request) for up to a second, since closing with unread
        data resets the connection and the client would lose the alert with it."""
        transport = self._inner.transport_stream
        pending = getattr(self._inner, "_outgoing", None)  # trio's outgoing MemoryBIO
        with trio.move_on_after(1):
            try:
                if isinstance(pending, ssl.MemoryBIO) and pending.pending:
                    await transport.send_all(pending.read())
                await transport.send_eof()
                while await transport.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await transport.aclose()

    def selected_alpn_protocol(self) -> str | None:
        got: str | None = self._inner.selected_alpn_protocol()
        return got

    @property
    def transport_stream(self) -> trio.SocketStream:
        return self._inner.transport_stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        if self._key is not None:
            self._tls._peers.pop(self._key, None)
            self._key = None
        await self._inner.aclose()


class _TLSListener(trio.abc.Listener[_PeerStream]):
    """Wraps accepted connections in TLS with the context current at accept time."""

    def __init__(self, inner: trio.SocketListener, tls: ServerTLS) -> None:
        self._inner = inner
        self._tls = tls

    async def accept(self) -> _PeerStream:
        transport = await self._inner.accept()
        return _PeerStream(trio.SSLStream(transport, self._tls.context, server_side=True,
                                          https_compatible=True), self._tls)

    async def aclose(self) -> None:
        await self._inner.aclose()


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): reachable from this box only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) into host and port."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(app: Any, hc: HyperConfig, *, listen: Sequence[str], tls: ServerTLS | None,
                plain_listen: Sequence[str] = (),
                shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on ``listen`` (HTTPS when ``tls`` is given) and ``plain_listen`` (HTTP)
    until ``shutdown_trigger`` returns; in-flight requests then get ``hc.graceful_timeout``.
    ``task_status.started`` gets the URLs listened on, TLS ones first.

    The same steps as ``hypercorn.trio.run.worker_serve`` (lifespan, one ``TCPServer`` per
    connection, the graceful deadline), with our listeners in place of its own."""
    wrapped = wrap_app(app, hc.wsgi_max_body_size, None)
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, hc, state)  # type: ignore[arg-type]
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners: list[trio.abc.Listener[Any]] = []
            urls: list[str] = []
            for addrs, secure in ((listen, tls is not None), (plain_listen, False)):
                for addr in addrs:
                    host, port = split_listen(addr)
                    for lst in await trio.open_tcp_listeners(port, host=host or None,
                                                             backlog=hc.backlog):
                        sock = lst.socket
                        name = repr_socket_addr(sock.family, sock.getsockname())
                        urls.append(f"{'https' if secure else 'http'}://{name}")
                        listeners.append(_TLSListener(lst, tls) if secure and tls else lst)
            task_status.started(urls)
            try:
                async with trio.open_nursery() as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(partial(
                        trio.serve_listeners,
                        partial(TCPServer, wrapped, hc, context,
                                ConnectionState(state.copy())),  # type: ignore[arg-type]
                        listeners, handler_nursery=server_nursery))
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other = error.split((ShutdownError, KeyboardInterrupt))
                if other is not None:
                    raise other from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + hc.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


# -- clients -----------------------------------------------------------------------------------

def client_context(ca_file: str = "", cert_file: str = "", key_file: str = "",
                   setting: str = "central") -> ssl.SSLContext:
    """A client context: the system trust store, or only ``ca_file`` (a private CA) when set;
    a client certificate when ``cert_file`` is set."""
    for name, path in (("ca_file", ca_file), ("client_cert", cert_file),
                       ("client_key", key_file)):
        if path and not Path(path).is_file():
            raise TLSError(f"{setting}.{name}", f"{path} does not exist or is not a file")
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    except ssl.SSLError as exc:
        raise TLSError(f"{setting}.ca_file", f"{ca_file} holds no usable CA certificate "
                                             f"({exc.reason or exc})") from None
    if cert_file:
        read_cert(cert_file, f"{setting}.client_cert")
        try:
            ctx.load_cert_chain(cert_file, key_file or None)
        except ssl.SSLError as exc:
            raise TLSError(f"{setting}.client_key", f"{key_file or cert_file} holds no PEM key "
                           f"of the certificate in {cert_file} ({exc.reason or exc})") from None
    return ctx


_HINTS = (
    ("unable to get local issuer", "set central.ca_file to the CA that signed central's "
                                   "certificate"),
    ("self-signed certificate", "set central.ca_file to the CA that signed central's "
                                "certificate"),
    ("hostname mismatch", "set central.server_name to a name in central's certificate"),
    ("ip address mismatch", "set central.server_name to a name in central's certificate"),
    ("certificate has expired", "central's certificate has expired: renew it"),
    ("certificate is not yet valid", "central's certificate is not valid yet: check this "
                                     "box's clock"),
    ("certificate required", "central requires a client certificate: set "
                             "central.client_cert and central.client_key"),
    ("unknown ca", "central does not trust our client certificate's CA"),
    ("bad certificate", "central refused our client certificate"),
    ("certificate unknown", "central refused our client certificate"),
    ("wrong version number", "the other end does not speak TLS on this port (http:// "
                             "instead of https://?)"),
    ("record layer failure", "the other end does not speak TLS on this port (http:// "
                             "instead of https://?)"),
)


def tls_problem(exc: BaseException) -> str | None:
    """``"TLS: <what failed> (<what to do>)"`` when ``exc`` (or what caused it) is a TLS
    failure, else ``None``."""
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLError):
            what = (getattr(cause, "verify_message", "") or cause.reason or str(cause))
            what = str(what).replace("_", " ").lower()
            hint = next((h for k, h in _HINTS if k in what), "")
            return f"TLS: {what}" + (f" ({hint})" if hint else "")
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None
