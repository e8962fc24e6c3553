"""An https webhook receiver on 127.0.0.1 for the tests: a certificate authority made per module, a receiver
certificate for HOOK_HOST and 127.0.0.1, and a server answering each POST with the next scripted reply."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOOK_HOST = "hooks.test"  # a name the tests' resolver maps to 127.0.0.1; the certificate is for it (and 127.0.0.1)


# -- a certificate authority and a receiver certificate for hooks.test and 127.0.0.1 ---------------------------------
def _certificate(subject: str, key: Any, issuer: tuple[x509.Name, Any] | None, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    else:
        usage = x509.KeyUsage(True, True, False, False, False, False, False, False, False)
        sans = [x509.DNSName(HOOK_HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.add_extension(usage, critical=True).sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pki")
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test webhook CA", ca_key, None, ca=True)
    leaf = _certificate(HOOK_HOST, leaf_key, (ca.subject, ca_key), ca=False)
    paths = {"ca": out / "ca.pem", "cert": out / "leaf.pem", "key": out / "leaf.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


# -- the receiver ---------------------------------------------------------------------------------------------------
@dataclass
class Receiver:
    """An https server on 127.0.0.1 answering each POST with the next scripted reply (the last one repeats)."""

    port: int
    replies: list[Any] = field(default_factory=list)  # int status | ("sleep", seconds, status) | ("redirect", url)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook?token=abc", host: str = HOOK_HOST) -> str:
        return f"https://{host}:{self.port}{path}"

    def next_reply(self) -> Any:
        with self.lock:
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def _handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # a client that stops talking cannot hold a thread longer

        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            reply = receiver.next_reply()
            location = None
            if isinstance(reply, tuple) and reply[0] == "sleep":
                time.sleep(reply[1])
                reply = reply[2]
            elif isinstance(reply, tuple) and reply[0] == "redirect":
                location, reply = reply[1], 302
            self.send_response(int(reply))
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver(pki: dict[str, Path]) -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    found = Receiver(server.server_address[1], [200])
    server.RequestHandlerClass = _handler_for(found)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki["cert"], pki["key"])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
