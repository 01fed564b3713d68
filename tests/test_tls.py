"""TLS (asyncio's ``sslproto`` over the loop's stream transport) and ``loop.sendfile``.

ferroloop runs asyncio's ``sslproto.SSLProtocol`` (its subclass with a native data pump,
``ferroloop._tls``) on top of its native socket transport, and
``loop.sendfile`` is asyncio's code (``_sendfile_native`` through ``sock_sendfile``, and
``_sendfile_fallback``) over that transport; every test also runs on stdlib asyncio, the oracle.

The certificates are made when the module's tests first need them: a CA and a server certificate
for ``localhost`` signed by it, plus a second CA that signed nothing the server presents. They are
generated with the ``cryptography`` package when it is importable, else with the ``openssl``
command; only when neither is available do the tests fall back to CPython's test certificates.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import hashlib
import io
import os
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass

import pytest
from conftest import digest as _sha
from conftest import run_coro, until

KiB = 1024
MiB = 1024 * KiB


def _payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def closed_server(server) -> None:
    """Close ``server`` once each of its connections is gone (no transport left behind)."""
    await until(lambda: server._active_count == 0, "the server's transports to close")
    server.close()
    await server.wait_closed()


def expect_incoming_failure(loop, exc_handler, exc_type) -> None:
    """A failed TLS handshake of an accepted connection reaches the exception handler only in
    debug mode (``_accept_connection2``), as 'Error on transport creation ...'."""
    if loop.get_debug():
        (ctx,) = exc_handler.consume(1)
        assert ctx["message"] == "Error on transport creation for incoming connection"
        assert isinstance(ctx["exception"], exc_type)
    else:
        exc_handler.consume(0)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Certs:
    ca: str  # the CA that signed the server certificate
    cert: str  # the server certificate, for 'localhost'
    key: str  # the server certificate's private key
    other_ca: str  # a CA that signed nothing the server presents
    source: str  # how they were made

    def server_ctx(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_ctx(self, cafile: str | None = None) -> ssl.SSLContext:
        # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname, i.e. verification on.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile or self.ca)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        return ctx


CA_CN = "ferroloop test CA"
OTHER_CA_CN = "ferroloop untrusted CA"


def _certs_with_cryptography(d: str) -> Certs:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ferroloop tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    def usage(**flags):
        names = (
            "digital_signature content_commitment key_encipherment data_encipherment "
            "key_agreement key_cert_sign crl_sign encipher_only decipher_only"
        ).split()
        return x509.KeyUsage(**{n: flags.get(n, False) for n in names})

    def builder(subject, issuer, public_key):
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def write(path, cert):
        with open(path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

    def make_ca(cn, path):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(name(cn), name(cn), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        write(path, cert)
        return key, cert

    ca_key, ca_cert = make_ca(CA_CN, os.path.join(d, "ca.pem"))
    make_ca(OTHER_CA_CN, os.path.join(d, "other-ca.pem"))
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        builder(name("localhost"), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write(os.path.join(d, "server.pem"), cert)
    with open(os.path.join(d, "server.key"), "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return Certs(
        ca=os.path.join(d, "ca.pem"),
        cert=os.path.join(d, "server.pem"),
        key=os.path.join(d, "server.key"),
        other_ca=os.path.join(d, "other-ca.pem"),
        source="cryptography",
    )


def _certs_with_openssl(d: str) -> Certs:
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cn, stem in [(CA_CN, "ca"), (OTHER_CA_CN, "other-ca")]:
        openssl(
            *["req", "-x509", *newkey, "-keyout", f"{stem}.key", "-out", f"{stem}.pem"],
            *["-days", "30", "-subj", f"/O=ferroloop tests/CN={cn}"],
            *["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"],
            *["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        )
    openssl(
        *["req", *newkey, "-keyout", "server.key", "-out", "server.csr"],
        *["-subj", "/O=ferroloop tests/CN=localhost"],
    )
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=DNS:localhost\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
        )
    openssl(
        *["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"],
        *["-set_serial", str(random.getrandbits(63)), "-days", "30"],
        *["-extfile", "server.ext", "-out", "server.pem"],
    )
    return Certs(
        ca=os.path.join(d, "ca.pem"),
        cert=os.path.join(d, "server.pem"),
        key=os.path.join(d, "server.key"),
        other_ca=os.path.join(d, "other-ca.pem"),
        source="openssl",
    )


def _cpython_certs() -> Certs:
    import test

    certdata = os.path.join(os.path.dirname(test.__file__), "certdata")
    if not os.path.exists(os.path.join(certdata, "keycert3.pem")):
        pytest.skip("no way to make certificates: no cryptography, no openssl, no certdata")
    # keycert3.pem: key and certificate for 'localhost', signed by pycacert.pem.
    return Certs(
        ca=os.path.join(certdata, "pycacert.pem"),
        cert=os.path.join(certdata, "keycert3.pem"),
        key=os.path.join(certdata, "keycert3.pem"),
        other_ca=os.path.join(certdata, "selfsigned_pythontestdotnet.pem"),
        source="cpython",
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    d = str(tmp_path_factory.mktemp("certs"))
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            return _cpython_certs()
        return _certs_with_openssl(d)
    return _certs_with_cryptography(d)


@pytest.mark.parametrize("how", ["cryptography", "openssl"])
def test_generated_certificates_verify(tmp_path, how):
    """Both generators make a chain that ``ssl`` verifies for 'localhost' (no loop involved)."""
    if how == "cryptography":
        pytest.importorskip("cryptography")
        c = _certs_with_cryptography(str(tmp_path))
    else:
        if shutil.which("openssl") is None:
            pytest.skip("no openssl command")
        c = _certs_with_openssl(str(tmp_path))
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = c.client_ctx().wrap_bio(client_in, client_out, server_hostname="localhost")
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = c.server_ctx().wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(client_out.read())
        client_in.write(s_out.read())
    assert done == {"client": True, "server": True}
    assert dict(x[0] for x in client.getpeercert()["subject"])["commonName"] == "localhost"


# --------------------------------------------------------------------------- protocols


class Collector(asyncio.Protocol):
    """Records the callbacks (consecutive data_received calls as one "data") and the bytes."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.transport = None
        self.data = bytearray()
        self.events: list[str] = []
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self._want = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.data += data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self._check()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        self._check()

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)
        self._check()

    def _check(self):
        if self._want is not None:
            n, fut = self._want
            if len(self.data) >= n or self.eof.done() or self.lost.done():
                self._want = None
                if not fut.done():
                    fut.set_result(None)

    async def received(self, n: int) -> bytes:
        """Wait until ``n`` bytes have arrived in all; returns the first ``n``."""
        if len(self.data) < n:
            fut = asyncio.get_running_loop().create_future()
            self._want = (n, fut)
            self._check()
            await fut
        assert len(self.data) >= n, f"connection ended after {len(self.data)} of {n} bytes"
        return bytes(self.data[:n])


class Echo(asyncio.Protocol):
    def __init__(self, made=None):
        self.made = made

    def connection_made(self, transport):
        self.transport = transport
        if self.made is not None:
            self.made.append(self)

    def data_received(self, data):
        self.transport.write(data)


class Sink(asyncio.Protocol):
    """Hashes what it receives; ``done`` resolves at EOF (or connection loss) with the digest."""

    def __init__(self):
        self.hash = hashlib.sha256()
        self.count = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.hash.update(data)
        self.count += len(data)

    def eof_received(self):
        if not self.done.done():
            self.done.set_result((self.count, self.hash.hexdigest()))

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result((self.count, self.hash.hexdigest()))


def _subject(cert: dict) -> dict:
    return {k: v for rdn in cert["subject"] for k, v in rdn}


def _issuer(cert: dict) -> dict:
    return {k: v for rdn in cert["issuer"] for k, v in rdn}


async def _echo_server(loop, ctx, made=None, **kwargs):
    server = await loop.create_server(lambda: Echo(made), "127.0.0.1", 0, ssl=ctx, **kwargs)
    return server, server.sockets[0].getsockname()[:2]


# --------------------------------------------------------------------------- 2. client / server


@pytest.mark.parametrize("size", [1 * KiB, 4 * MiB], ids=["1KiB", "4MiB"])
def test_tls_echo_verified(loop, certs, size):
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    payload = _payload(size, seed=size)

    async def main():
        server, addr = await _echo_server(loop, server_ctx)
        try:
            transport, proto = await loop.create_connection(
                Collector, *addr, ssl=client_ctx, server_hostname="localhost"
            )
            transport.write(payload)
            echoed = await proto.received(size)
            assert len(proto.data) == size
            assert _sha(echoed) == _sha(payload)
            transport.close()
            assert await proto.lost is None
            assert proto.events == ["made", "data", "eof", "lost"]
        finally:
            await closed_server(server)

    run_coro(loop, main())


async def _rechunking_proxy(loop, target, seed):
    """A TCP proxy to ``target`` for one connection that forwards each direction in random
    pieces (1 B to 40 KiB, with pauses), so TLS records reach the other side split anywhere:
    mid-header, mid-record, several records at once. Returns the server and a future that
    resolves once the connection has ended on both sides."""
    rng = random.Random(seed)

    async def pump(reader, writer):
        try:
            while data := await reader.read(256 * KiB):
                while data:
                    n = rng.choice([1, 5, 7, 300, 4 * KiB, 16 * KiB + 21, 40 * KiB])
                    writer.write(data[:n])
                    data = data[n:]
                    await writer.drain()
                    if rng.random() < 0.3:
                        await asyncio.sleep(0.001)
            writer.write_eof()
        except ConnectionError:
            writer.transport.abort()

    async def handle(reader, writer):
        up_reader, up_writer = await asyncio.open_connection(*target)
        for w in (writer, up_writer):
            w.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        for w in (writer, up_writer):
            w.close()
        finished.set_result(None)

    finished = loop.create_future()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, finished


def test_tls_records_split_anywhere(loop, certs):
    """Bulk data and a small tail through a proxy that splits the TLS stream at random points:
    every byte arrives once and in order both ways, and close_notify still ends the connection
    (the read pump must neither stall on a partial record nor lose one held by OpenSSL)."""
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    payload = _payload(3 * MiB + 4321, seed=7)
    tail = b"tail"

    async def main():
        server, addr = await _echo_server(loop, server_ctx)
        proxy, proxied = await _rechunking_proxy(loop, addr, seed=11)
        try:
            transport, proto = await loop.create_connection(
                Collector,
                *proxy.sockets[0].getsockname()[:2],
                ssl=client_ctx,
                server_hostname="localhost",
            )
            for i in range(0, len(payload), 100 * KiB + 3):
                transport.write(payload[i : i + 100 * KiB + 3])
            echoed = await proto.received(len(payload))
            assert _sha(echoed) == _sha(payload)
            transport.write(tail)
            await proto.received(len(payload) + len(tail))
            assert bytes(proto.data[-len(tail) :]) == tail
            transport.close()
            assert await proto.lost is None
            assert proto.events[-2:] == ["eof", "lost"]
            assert len(proto.data) == len(payload) + len(tail)
            await proxied  # the proxy saw both ends close
        finally:
            proxy.close()
            await proxy.wait_closed()
            await closed_server(server)

    run_coro(loop, main())


def test_tls_runs_over_the_loops_own_transport(loop, certs):
    """`ssl=` puts asyncio's SSLProtocol on the loop's own socket transport, on both sides
    (asyncio's `_make_ssl_transport` builds its transport without `_make_socket_transport`)."""
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    made = []

    async def main():
        server, addr = await _echo_server(loop, server_ctx, made)
        try:
            transport, proto = await loop.create_connection(
                Collector, *addr, ssl=client_ctx, server_hostname="localhost"
            )
            transport.write(b"x")
            await proto.received(1)
            raw = [transport._ssl_protocol._transport, made[0].transport._ssl_protocol._transport]
            for t in raw:
                if type(loop).__module__.startswith("ferroloop"):
                    assert type(t).__module__ == "ferroloop._transports", type(t)
                else:
                    assert type(t).__name__ == "_SelectorSocketTransport", type(t)
            transport.close()
            assert await proto.lost is None
        finally:
            await closed_server(server)

    run_coro(loop, main())


def test_tls_extra_info(loop, certs):
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()

    async def main():
        made = []
        server, addr = await _echo_server(loop, server_ctx, made)
        try:
            transport, proto = await loop.create_connection(
                Collector, *addr, ssl=client_ctx, server_hostname="localhost"
            )
            await until(lambda: made, "the server's connection_made")
            server_tr = made[0].transport

            sslobj = transport.get_extra_info("ssl_object")
            assert isinstance(sslobj, ssl.SSLObject)
            assert sslobj.server_side is False
            assert sslobj.server_hostname == "localhost"
            assert sslobj.context is client_ctx
            assert transport.get_extra_info("sslcontext") is client_ctx

            peercert = transport.get_extra_info("peercert")
            assert peercert == sslobj.getpeercert()
            assert _subject(peercert)["commonName"] == "localhost"
            assert _issuer(peercert)["commonName"] == _subject_of_ca(certs)
            assert ("DNS", "localhost") in peercert["subjectAltName"]

            cipher = transport.get_extra_info("cipher")
            assert cipher == sslobj.cipher()
            name, version, bits = cipher
            assert isinstance(name, str) and version.startswith("TLSv1.") and bits >= 128
            assert transport.get_extra_info("compression") is None
            assert transport.get_extra_info("compression") == sslobj.compression()

            # The TCP transport's entries show through.
            assert transport.get_extra_info("peername") == addr
            assert transport.get_extra_info("sockname") == server_tr.get_extra_info("peername")
            sock = transport.get_extra_info("socket")
            assert sock.getpeername() == addr
            assert transport.get_extra_info("no such entry", "dflt") == "dflt"

            # The server's side: no client certificate was asked for.
            server_obj = server_tr.get_extra_info("ssl_object")
            assert isinstance(server_obj, ssl.SSLObject) and server_obj.server_side is True
            assert server_tr.get_extra_info("sslcontext") is server_ctx
            assert server_tr.get_extra_info("peercert") is None
            assert server_tr.get_extra_info("cipher") == cipher
            assert server_tr.get_extra_info("compression") is None

            # A TLS transport cannot half-close.
            assert transport.can_write_eof() is False
            transport.close()
            assert await proto.lost is None
        finally:
            await closed_server(server)

    run_coro(loop, main())


def _subject_of_ca(certs: Certs) -> str:
    return _subject(ssl._ssl._test_decode_cert(certs.ca))["commonName"]


def test_tls_write_flow_control(loop, certs):
    """A TLS transport pauses and resumes its protocol's writing as its peer stops and resumes
    reading (sslproto over the loop's transport flow control, both ways)."""
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    payload = _payload(8 * MiB, seed=21)
    chunk = 64 * KiB

    async def main():
        servers = []

        class PausedServer(Collector):
            def connection_made(self, transport):
                super().connection_made(transport)
                transport.pause_reading()
                servers.append(self)

        class Writer(Collector):
            def __init__(self):
                super().__init__()
                self.flow = []
                self.writable = asyncio.Event()
                self.writable.set()

            def pause_writing(self):
                self.flow.append("pause")
                self.writable.clear()

            def resume_writing(self):
                self.flow.append("resume")
                self.writable.set()

        server = await loop.create_server(PausedServer, "127.0.0.1", 0, ssl=server_ctx)
        addr = server.sockets[0].getsockname()[:2]
        try:
            transport, proto = await loop.create_connection(
                Writer, *addr, ssl=client_ctx, server_hostname="localhost"
            )
            await until(lambda: servers, "the server's connection_made")
            (peer,) = servers
            pos = 0
            while proto.writable.is_set() and pos < len(payload):
                transport.write(payload[pos : pos + chunk])
                pos += chunk
            # The peer does not read: the writer is paused long before the end.
            assert proto.flow == ["pause"] and pos < len(payload)
            assert transport.get_write_buffer_size() >= transport.get_write_buffer_limits()[1]
            await asyncio.sleep(0.05)
            assert proto.flow == ["pause"] and not peer.transport.is_reading()
            peer.transport.resume_reading()
            while pos < len(payload):
                await proto.writable.wait()
                transport.write(payload[pos : pos + chunk])
                pos += chunk
            got = await peer.received(len(payload))
            assert _sha(got) == _sha(payload)
            await until(lambda: proto.flow[-1] == "resume", "the writer to be resumed")
            assert proto.flow == ["pause", "resume"] * (len(proto.flow) // 2)
            assert transport.get_write_buffer_size() == 0
            transport.close()
            assert await proto.lost is None
        finally:
            await closed_server(server)

    run_coro(loop, main())


def test_tls_reading_paused_and_resumed_midstream(loop, certs):
    """A protocol that pauses reading after a chunk and resumes a moment later still gets every
    byte once and in order: what arrives while it is paused waits in the incoming BIO (up to the
    high-water mark, then the socket is paused too) and is read on resume, before anything
    received later."""
    payload = _payload(8 * MiB, seed=31)

    async def main():

        class Stuttering(Collector):
            pauses = 0

            def data_received(self, data):
                super().data_received(data)
                if self.pauses < 60:
                    self.pauses += 1
                    self.transport.pause_reading()
                    loop.call_later(0.003, self.transport.resume_reading)

        server, transport, proto = await _server_and_client(
            loop, certs, certs.server_ctx(), Stuttering
        )
        try:
            for i in range(0, len(payload), 256 * KiB):
                transport.write(payload[i : i + 256 * KiB])
            got = await proto.received(len(payload))
            assert _sha(got) == _sha(payload)
            assert proto.pauses >= 10  # many chunks arrived while paused or just resumed
            transport.close()
            await proto.lost
        finally:
            await closed_server(server)

    run_coro(loop, main())


# --------------------------------------------------------------------------- 3. verification


@pytest.mark.parametrize("case", ["hostname", "untrusted-ca"])
def test_tls_verification_failure(loop, exc_handler, certs, case):
    server_ctx = certs.server_ctx()
    if case == "hostname":
        client_ctx, hostname = certs.client_ctx(), "wrong.example"
    else:
        client_ctx, hostname = certs.client_ctx(certs.other_ca), "localhost"

    async def main():
        made = []
        server, addr = await _echo_server(loop, server_ctx, made)
        try:
            before = _fd_count()
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await loop.create_connection(
                    Collector, *addr, ssl=client_ctx, server_hostname=hostname
                )
            if case == "hostname":
                assert "Hostname mismatch" in info.value.verify_message
                assert "wrong.example" in info.value.verify_message
            else:
                assert info.value.verify_message == "unable to get local issuer certificate"
            assert info.value.reason == "CERTIFICATE_VERIFY_FAILED"
            # The server's half of the failed handshake is closed too, and no fd is left.
            await until(lambda: server._active_count == 0, "the server's transport to close")
            assert made == []  # the application protocol never got a connection
            assert _fd_count() <= before
            # The client's alert (or its reset) ends the server's handshake.
            expect_incoming_failure(loop, exc_handler, (ssl.SSLError, ConnectionError))
        finally:
            await closed_server(server)

    run_coro(loop, main())


# --------------------------------------------------------------------------- 4. handshake timeout


def test_tls_client_handshake_timeout(loop, certs):
    client_ctx = certs.client_ctx()

    async def main():
        # A plain TCP listener that never accepts nor answers (the kernel completes the
        # connection; the ClientHello is never answered).
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            made = []
            start = time.monotonic()
            with pytest.raises(ConnectionAbortedError) as info:
                await loop.create_connection(
                    lambda: made.append(1) or asyncio.Protocol(),
                    *lsock.getsockname(),
                    ssl=client_ctx,
                    server_hostname="localhost",
                    ssl_handshake_timeout=0.3,
                )
            elapsed = time.monotonic() - start
            assert 0.25 <= elapsed < 1.0, elapsed
            assert "SSL handshake is taking longer than 0.3 seconds" in str(info.value)
            # The protocol was made but its connection_made was never called (nothing to see).
            assert made == [1]

    run_coro(loop, main())


def test_tls_server_handshake_timeout(loop, exc_handler, certs):
    server_ctx = certs.server_ctx()

    async def main():
        made = []
        server, addr = await _echo_server(loop, server_ctx, made, ssl_handshake_timeout=0.3)
        try:
            before = _fd_count()
            client = socket.create_connection(addr)  # never sends a ClientHello
            client.setblocking(False)
            await until(lambda: server._active_count == 1, "the server to accept")
            start = time.monotonic()
            # The server gives up and closes its transport: the client sees EOF.
            data = await asyncio.wait_for(loop.sock_recv(client, 100), 2.0)
            elapsed = time.monotonic() - start
            assert data == b""
            assert elapsed < 1.0, elapsed
            await until(lambda: server._active_count == 0, "the server's transport to close")
            assert made == []
            client.close()
            assert _fd_count() == before
            expect_incoming_failure(loop, exc_handler, ConnectionAbortedError)
        finally:
            await closed_server(server)

    run_coro(loop, main())


# --------------------------------------------------------------------------- 5. start_tls


def test_start_tls_upgrade_both_sides(loop, loop_kind, certs):
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    big_up, big_down = _payload(300 * KiB, seed=51), _payload(200 * KiB, seed=52)

    async def main():
        upgrade = loop.create_future()

        class PlainServer(Collector):
            def data_received(self, data):
                super().data_received(data)
                if self.data.endswith(b"STARTTLS\n") and not upgrade.done():
                    # Stop reading before the ClientHello can arrive as plain data.
                    self.transport.pause_reading()
                    self.transport.write(b"GO\n")
                    upgrade.set_result(self)

        server = await loop.create_server(PlainServer, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()[:2]
        try:
            plain_tr, plain_client = await loop.create_connection(Collector, *addr)
            plain_tr.write(b"hello in clear\nSTARTTLS\n")
            plain_server = await upgrade
            assert bytes(plain_server.data) == b"hello in clear\nSTARTTLS\n"

            server_proto = Collector()
            server_task = asyncio.create_task(
                loop.start_tls(
                    plain_server.transport,
                    server_proto,
                    server_ctx,
                    server_side=True,
                    ssl_handshake_timeout=5.0,
                    ssl_shutdown_timeout=5.0,
                )
            )
            assert await plain_client.received(3) == b"GO\n"
            client_proto = Collector()
            client_tr = await loop.start_tls(
                plain_tr, client_proto, client_ctx, server_hostname="localhost"
            )
            client_tr.write(b"first over TLS")  # written right after the upgrade
            server_tr = await server_task
            server_tr.write(b"welcome")  # likewise on the server's side

            assert await server_proto.received(14) == b"first over TLS"
            assert await client_proto.received(7) == b"welcome"
            assert client_tr.get_extra_info("ssl_object").server_side is False
            assert _subject(client_tr.get_extra_info("peercert"))["commonName"] == "localhost"
            assert server_tr.get_extra_info("ssl_object").server_side is True
            # The loop's own SSLProtocol (ferroloop's native data pump; asyncio's own class).
            expected = {"asyncio": "asyncio.sslproto", "ferroloop": "ferroloop._tls"}[loop_kind]
            for tr in (client_tr, server_tr):
                assert type(tr._ssl_protocol).__module__ == expected

            client_tr.write(big_up)
            server_tr.write(big_down)
            assert _sha(await server_proto.received(14 + len(big_up))) == _sha(
                b"first over TLS" + big_up
            )
            assert _sha(await client_proto.received(7 + len(big_down))) == _sha(
                b"welcome" + big_down
            )

            # Nothing of the TLS traffic reached the plain protocols.
            assert bytes(plain_server.data) == b"hello in clear\nSTARTTLS\n"
            assert bytes(plain_client.data) == b"GO\n"
            # start_tls does not call connection_made of the new protocols.
            client_tr.close()
            assert await client_proto.lost is None
            assert await server_proto.lost is None
            assert client_proto.events == ["data", "eof", "lost"]
            assert server_proto.events == ["data", "eof", "lost"]
            assert plain_client.events == ["made", "data"]
            assert plain_server.events == ["made", "data"]
        finally:
            await closed_server(server)

    run_coro(loop, main())


# --------------------------------------------------------------------------- 6. shutdown


def test_tls_close_with_data_in_flight(loop, certs):
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    payload = _payload(2 * MiB, seed=6)

    async def main():
        servers_protos = []

        class WriteAndClose(Collector):
            def connection_made(self, transport):
                super().connection_made(transport)
                servers_protos.append(self)
                transport.write(payload)
                transport.close()  # at once: the data is still in flight
                assert transport.is_closing()

        server = await loop.create_server(
            WriteAndClose, "127.0.0.1", 0, ssl=server_ctx, ssl_shutdown_timeout=5.0
        )
        addr = server.sockets[0].getsockname()[:2]
        try:
            transport, proto = await loop.create_connection(
                Collector,
                *addr,
                ssl=client_ctx,
                server_hostname="localhost",
                ssl_shutdown_timeout=5.0,
            )
            assert await proto.lost is None
            assert len(proto.data) == len(payload)
            assert _sha(proto.data) == _sha(payload)
            assert proto.events == ["made", "data", "eof", "lost"]
            assert transport.is_closing()
            (server_proto,) = servers_protos
            assert await server_proto.lost is None
            assert server_proto.events == ["made", "eof", "lost"]
        finally:
            await closed_server(server)

    run_coro(loop, main())


async def _raw_tls_handshake(loop, sock, ctx, server_side):
    """Do a TLS handshake on a plain non-blocking socket through ``ssl.MemoryBIO``: a TLS peer
    that does only what the test tells it (here: never answers a close_notify)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hostname = None if server_side else "localhost"
    obj = ctx.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=hostname)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                await loop.sock_sendall(sock, outgoing.read())
            chunk = await loop.sock_recv(sock, 64 * KiB)
            if not chunk:
                raise ConnectionError("EOF during the handshake")
            incoming.write(chunk)
    if outgoing.pending:
        await loop.sock_sendall(sock, outgoing.read())
    obj._ferroloop_test_outgoing = outgoing
    return obj, incoming


async def _raw_tls_read_all(loop, sock, obj, incoming) -> bytes:
    """Everything the peer sent until the socket's EOF; asserts it ended with a close_notify."""
    while True:
        chunk = await loop.sock_recv(sock, 64 * KiB)
        if not chunk:
            incoming.write_eof()
            break
        incoming.write(chunk)
    data = bytearray()
    while True:
        # b"" once the close_notify is read (a missing one raises SSLEOFError instead).
        piece = obj.read(64 * KiB)
        if not piece:
            return bytes(data)
        data += piece


@pytest.mark.parametrize("side", ["server", "client"])
def test_tls_shutdown_timeout_when_peer_never_answers(loop, certs, side):
    """The side that closes sends its data and a close_notify, waits ``ssl_shutdown_timeout``
    for the peer's close_notify, then aborts: connection_lost(TimeoutError)."""
    payload = _payload(100 * KiB, seed=61)

    async def main():
        lost = loop.create_future()

        class WriteAndClose(asyncio.Protocol):
            def connection_made(self, transport):
                if side == "server":
                    transport.write(payload)
                    transport.close()

            def connection_lost(self, exc):
                lost.set_result((exc, time.monotonic()))

        if side == "server":
            server = await loop.create_server(
                WriteAndClose, "127.0.0.1", 0, ssl=certs.server_ctx(), ssl_shutdown_timeout=0.3
            )
            sock = socket.create_connection(server.sockets[0].getsockname()[:2])
            sock.setblocking(False)
            obj, incoming = await _raw_tls_handshake(loop, sock, certs.client_ctx(), False)
            start = time.monotonic()
        else:
            server = None
            with socket.create_server(("127.0.0.1", 0)) as lsock:
                lsock.setblocking(False)
                connecting = asyncio.create_task(
                    loop.create_connection(
                        WriteAndClose,
                        *lsock.getsockname(),
                        ssl=certs.client_ctx(),
                        server_hostname="localhost",
                        ssl_shutdown_timeout=0.3,
                    )
                )
                sock, _ = await loop.sock_accept(lsock)
            sock.setblocking(False)
            obj, incoming = await _raw_tls_handshake(loop, sock, certs.server_ctx(), True)
            transport, _ = await connecting
            transport.write(payload)
            transport.close()
            start = time.monotonic()
        try:
            exc, when = await lost
            assert isinstance(exc, TimeoutError)
            assert str(exc) == "SSL shutdown timed out"
            assert 0.25 <= when - start < 1.0, when - start
            # The peer got all the data, then the close_notify, then the end of the stream.
            data = await _raw_tls_read_all(loop, sock, obj, incoming)
            assert _sha(data) == _sha(payload)
        finally:
            sock.close()
            if server is not None:
                await closed_server(server)

    run_coro(loop, main())


# --------------------------------------------------------------------------- leaks


def test_tls_connections_do_not_leak(loop, loop_kind, certs):
    """300 TLS connections with an echo each, ended by the client's close, its abort or the
    server's close: afterwards no fd, no protocol and (ferroloop) no TLS BIO is left — each BIO
    is freed once neither OpenSSL nor its Python object holds it."""
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    if loop_kind == "ferroloop":
        from ferroloop import _ferroloop

        live_bios = _ferroloop.live_tls_bios
    else:

        def live_bios():
            return 0

    protocols = weakref.WeakSet()

    async def main():
        made = []
        server, addr = await _echo_server(loop, server_ctx, made)

        async def one(i):
            transport, proto = await loop.create_connection(
                Collector, *addr, ssl=client_ctx, server_hostname="localhost"
            )
            protocols.add(proto)
            if loop_kind == "ferroloop":
                assert live_bios() >= bios + 4  # this connection's two ends, two BIOs each
            size = 1 + i * 97 % 20000
            transport.write(_payload(size, seed=i))
            await proto.received(size)
            how = i % 3
            if how == 0:
                transport.close()
            elif how == 1:
                transport.abort()
            else:
                server_side = next(
                    p
                    for p in made
                    if p.transport.get_extra_info("peername")
                    == transport.get_extra_info("sockname")
                )
                server_side.transport.close()
            await proto.lost

        for start in range(0, 300, 50):
            await asyncio.gather(*(one(i) for i in range(start, start + 50)))
        for p in made:
            protocols.add(p)
        made.clear()
        await closed_server(server)

    gc.collect()
    fds, bios = _fd_count(), live_bios()
    run_coro(loop, main(), timeout=30)
    gc.collect()
    assert len(protocols) == 0, list(protocols)[:3]
    assert _fd_count() == fds
    assert live_bios() == bios


# --------------------------------------------------------------------------- faults mid-connection


def test_tls_corrupted_record_ends_the_connection(loop, certs):
    """A record that fails authentication after the handshake ends the connection with the
    SSLError OpenSSL reports (asyncio's `_fatal_error`: `connection_lost(exc)`, no handler
    call for an OSError); the data before it was delivered."""

    async def main():
        made = []
        server = await loop.create_server(_kept(made), "127.0.0.1", 0, ssl=certs.server_ctx())
        sock = socket.create_connection(server.sockets[0].getsockname()[:2])
        sock.setblocking(False)
        try:
            obj, _ = await _raw_tls_handshake(loop, sock, certs.client_ctx(), False)
            await until(lambda: made, "the server's connection")
            (proto,) = made
            obj.write(b"hello")
            await loop.sock_sendall(sock, _pending_records(obj))
            assert await proto.received(5) == b"hello"
            obj.write(_payload(3000, seed=5))
            record = bytearray(_pending_records(obj))
            record[len(record) // 2] ^= 0x40  # inside the ciphertext
            await loop.sock_sendall(sock, bytes(record))
            exc = await proto.lost
            assert type(exc) is ssl.SSLError, repr(exc)
            assert (exc.library, exc.reason) == ("SSL", "DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
            assert bytes(proto.data) == b"hello"
            assert proto.events == ["made", "data", "lost"]
        finally:
            sock.close()
            await closed_server(server)

    run_coro(loop, main())


async def _server_and_client(loop, certs, server_ctx, cls: type = Collector):
    """A TLS server of `cls` protocols and one client connection to it (a plain Protocol);
    returns the server, the client's transport and the server side's protocol."""
    made: list = []
    server = await loop.create_server(_kept(made, cls), "127.0.0.1", 0, ssl=server_ctx)
    transport, _ = await loop.create_connection(
        asyncio.Protocol,
        *server.sockets[0].getsockname()[:2],
        ssl=certs.client_ctx(),
        server_hostname="localhost",
    )
    await until(lambda: made, "the server's connection")
    (proto,) = made
    return server, transport, proto


def _kept(made: list, cls: type = Collector):
    """A factory of `cls` protocols (`Collector`s) that appends each one it makes to `made`."""

    def factory():
        proto = cls()
        made.append(proto)
        return proto

    return factory


def _pending_records(obj) -> bytes:
    """What the raw peer's SSLObject (from `_raw_tls_handshake`) has written: its outgoing BIO."""
    return obj._ferroloop_test_outgoing.read()


def test_tls_msg_callback_error_is_raised_from_the_read(loop, exc_handler, certs):
    """A context's `_msg_callback` (a Python callback OpenSSL calls for every record) runs during
    the data phase too, and an exception from it fails the read as `_ssl` raises it: asyncio's
    'Fatal error on SSL protocol' and `connection_lost(exc)`."""

    class Boom(Exception):
        pass

    armed = []

    def callback(conn, direction, version, content_type, msg_type, data):
        if armed and direction == "read":
            raise Boom("from the message callback")

    async def main():
        server_ctx = certs.server_ctx()
        server_ctx._msg_callback = callback
        server, transport, proto = await _server_and_client(loop, certs, server_ctx)
        try:
            transport.write(b"before")
            assert await proto.received(6) == b"before"
            armed.append(True)
            transport.write(b"after")
            exc = await proto.lost
            assert type(exc) is Boom, repr(exc)
            (ctx,) = exc_handler.consume(1)
            assert ctx["message"] == "Fatal error on SSL protocol"
            assert ctx["exception"] is exc
            assert bytes(proto.data) == b"before"
            transport.close()
        finally:
            await closed_server(server)

    run_coro(loop, main())


# --------------------------------------------------------------------------- ferroloop's TLS BIOs


def _memory_pair(certs, tls_bios):
    """A server SSLObject (on ferroloop's BIOs, or on MemoryBIOs) and a client on MemoryBIOs,
    handshaken in memory. Returns (server, its incoming, its outgoing, client, c_in, c_out)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = certs.server_ctx().wrap_bio(s_in, s_out, server_side=True)
    client = certs.client_ctx().wrap_bio(c_in, c_out, server_hostname="localhost")
    if tls_bios is not None:
        s_in, s_out = tls_bios(server)
    for _ in range(10):
        done = 0
        for obj in (client, server):
            try:
                obj.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        s_in.write(c_out.read())
        if done == 2:
            break
    client.write(b"")  # nothing, but it settles the client's post-handshake state
    return server, s_in, s_out, client, c_in, c_out


def _bio_transcript(certs, tls_bios) -> list:
    """The same conversation over a server on `tls_bios` or on MemoryBIOs, as a list of what
    each step returned or raised (ciphertext compared by length: keys differ per handshake)."""
    server, s_in, s_out, client, c_in, c_out = _memory_pair(certs, tls_bios)
    out: list = []

    def step(name, f):
        try:
            value = f()
        except Exception as exc:  # noqa: BLE001 (the transcript compares exceptions)
            text = str(exc).split(" (_ssl.c:")[0]
            value = ("raised", type(exc).__name__, getattr(exc, "reason", None), text)
        out.append((name, value))

    step("eof at start", lambda: (s_in.eof, s_in.pending, s_out.pending))
    for size in (1, 20 * KiB, 70 * KiB):
        client.write(_payload(size, seed=size))
    wire = c_out.read()
    pieces = [wire[:3], bytearray(wire[3:5000]), memoryview(wire)[5000:40000], wire[40000:]]
    for i, piece in enumerate(pieces):
        step(f"write {i}", lambda piece=piece: s_in.write(piece))
        step(f"pending {i}", lambda: (s_in.pending, s_in.eof))
        step(f"read {i}", lambda: len(server.read(30 * KiB)))

    def read_all():
        total = 0
        while True:
            try:
                total += len(server.read(64 * KiB))
            except ssl.SSLWantReadError:
                return total

    step("read rest", read_all)
    step("empty write", lambda: s_in.write(b""))
    step("str write", lambda: s_in.write("text"))
    step("non-contiguous", lambda: s_in.write(memoryview(b"abcdef")[::2]))
    server.write(_payload(50 * KiB, seed=3))
    step("out pending", lambda: s_out.pending)
    step("out read 100", lambda: len(s_out.read(100)))
    step("out read 0", lambda: s_out.read(0))
    step("out read rest", lambda: len(s_out.read()))
    step("out read empty", lambda: (s_out.read(), s_out.pending, s_out.eof))
    # Half a record, then the end of the stream: the read fails as at an unexpected EOF.
    client.write(b"x" * 100)
    record = c_out.read()
    step("half record", lambda: s_in.write(record[:50]))
    step("read half", lambda: len(server.read(100)))
    step("write_eof", lambda: (s_in.write_eof(), s_in.eof, s_in.pending))
    step("read at eof", lambda: len(server.read(100)))
    step("eof after", lambda: (s_in.eof, s_in.pending))
    step("write after eof", lambda: s_in.write(b"more"))
    return out


def test_tls_bios_behave_as_memory_bios(ferroloop_mod, certs):
    """`_ferroloop.TlsBio` (the BIOs ferroloop's SSLProtocol gives OpenSSL) against
    `ssl.MemoryBIO`: the same calls on the same conversation return and raise the same."""
    install = ferroloop_mod._ferroloop.tls_install_bios
    server, s_in, s_out, *_ = _memory_pair(certs, install)
    assert type(s_in).__name__ == type(s_out).__name__ == "TlsBio"
    ours = _bio_transcript(certs, install)
    stdlib = _bio_transcript(certs, None)
    assert ours == stdlib
    eof_error = ("raised", "SSLEOFError", "UNEXPECTED_EOF_WHILE_READING")
    assert dict(stdlib)["read at eof"][:3] == eof_error


def test_tls_read_leaves_what_follows_a_close_notify(ferroloop_mod, certs):
    """`_ferroloop.tls_read` given a received chunk (lent to OpenSSL on ferroloop's BIOs, written
    into a MemoryBIO otherwise) that holds data, the peer's close_notify and bytes after it:
    both return the data and the close_notify, and the bytes after it stay in the BIO."""
    tls_read = ferroloop_mod._ferroloop.tls_read
    results = []
    for install in (ferroloop_mod._ferroloop.tls_install_bios, None):
        server, s_in, _, client, _, c_out = _memory_pair(certs, install)
        client.write(_payload(40 * KiB, seed=9))
        with pytest.raises(ssl.SSLWantReadError):
            client.unwrap()  # sends the close_notify, waits for the server's
        chunk = bytearray(c_out.read() + b"after the close_notify")
        chunk += bytes(100)  # the receive buffer is longer than what was received
        data, eof = tls_read(server, s_in, 256 * KiB, chunk, len(chunk) - 100)
        results.append((_sha(data), eof, s_in.pending, s_in.read()))
    assert results[0] == results[1]
    assert results[0][1:] == (True, 22, b"after the close_notify")


def test_tls_channel_chosen_per_context(ferroloop_mod, certs):
    """ferroloop's SSLProtocol reads through its own BIOs unless the context has a Python
    callback that runs during reads and writes; then asyncio's MemoryBIOs stay."""
    from ferroloop import _tls

    loop = ferroloop_mod.new_event_loop()
    try:
        plain = certs.server_ctx()
        traced = certs.server_ctx()
        traced._msg_callback = lambda *args: None
        for ctx, kind in ((plain, "TlsBio"), (traced, "MemoryBIO")):
            proto = _tls.SSLProtocol(loop, asyncio.Protocol(), ctx, None, server_side=True)
            assert type(proto._incoming).__name__ == kind
            assert type(proto._outgoing).__name__ == kind
    finally:
        loop.close()


def test_ssl_shutdown_timeout_requires_ssl(loop):
    async def main():
        with pytest.raises(ValueError, match="ssl_shutdown_timeout is only meaningful with ssl"):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl_shutdown_timeout=1.0)
        with pytest.raises(ValueError, match="ssl_shutdown_timeout is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, ssl_shutdown_timeout=1.0)

    run_coro(loop, main())


# --------------------------------------------------------------------------- 7. Unix sockets


def test_tls_over_unix_sockets(loop, certs):
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    payload = _payload(512 * KiB, seed=7)

    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "tls.sock")
            made = []
            server = await loop.create_unix_server(
                lambda: Echo(made), path, ssl=server_ctx, ssl_handshake_timeout=5.0
            )
            try:
                transport, proto = await loop.create_unix_connection(
                    Collector, path, ssl=client_ctx, server_hostname="localhost"
                )
                peercert = transport.get_extra_info("peercert")
                assert _subject(peercert)["commonName"] == "localhost"
                assert transport.get_extra_info("peername") == path
                transport.write(payload)
                assert _sha(await proto.received(len(payload))) == _sha(payload)
                assert made[0].transport.get_extra_info("sockname") == path
                transport.close()
                assert await proto.lost is None
            finally:
                await closed_server(server)

    run_coro(loop, main())


# --------------------------------------------------------------------------- 8. accepted socket


def test_tls_connect_accepted_socket(loop, certs):
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    payload = _payload(100 * KiB, seed=8)

    async def main():
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            lsock.setblocking(False)
            connecting = asyncio.create_task(
                loop.create_connection(
                    Collector, *lsock.getsockname(), ssl=client_ctx, server_hostname="localhost"
                )
            )
            conn, _ = await loop.sock_accept(lsock)
            server_tr, server_proto = await loop.connect_accepted_socket(
                Echo, conn, ssl=server_ctx, ssl_handshake_timeout=5.0, ssl_shutdown_timeout=5.0
            )
            client_tr, client_proto = await connecting
            assert server_proto.transport is server_tr
            assert server_tr.get_extra_info("ssl_object").server_side is True
            assert server_tr.get_extra_info("sslcontext") is server_ctx
            assert server_tr.get_extra_info("socket").fileno() == conn.fileno()
            client_tr.write(payload)
            assert _sha(await client_proto.received(len(payload))) == _sha(payload)
            client_tr.close()
            assert await client_proto.lost is None
            await until(server_tr.is_closing, "the server's transport to close")
            await until(lambda: conn.fileno() == -1, "the accepted socket to close")

    run_coro(loop, main())


# --------------------------------------------------------------------------- 9. streams


def test_tls_streams_framed_exchange(loop, certs):
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()
    messages = [_payload(512 * KiB, seed=91), b"x", b"", _payload(100 * KiB, seed=92)]

    async def main():
        handled = []

        async def handle(reader, writer):
            try:
                assert writer.get_extra_info("ssl_object").server_side is True
                while True:
                    n = int.from_bytes(await reader.readexactly(4), "big")
                    if n == 0xFFFFFFFF:
                        writer.write(b"bye")  # then close: a short read on the client
                        await writer.drain()
                        break
                    body = await reader.readexactly(n)
                    writer.write(hashlib.sha256(body).digest())
                    await writer.drain()
                handled.append("done")
            finally:
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=server_ctx, ssl_handshake_timeout=5.0
        )
        addr = server.sockets[0].getsockname()[:2]
        try:
            reader, writer = await asyncio.open_connection(
                *addr, ssl=client_ctx, server_hostname="localhost"
            )
            assert _subject(writer.get_extra_info("peercert"))["commonName"] == "localhost"
            assert writer.get_extra_info("sslcontext") is client_ctx
            assert writer.can_write_eof() is False
            for body in messages:
                writer.write(len(body).to_bytes(4, "big"))
                writer.write(body)
                await writer.drain()
                assert await reader.readexactly(32) == hashlib.sha256(body).digest()
            writer.write(b"\xff\xff\xff\xff")
            await writer.drain()
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(10)
            assert info.value.partial == b"bye"
            assert info.value.expected == 10
            assert reader.at_eof()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            assert writer.is_closing()
            assert handled == ["done"]
        finally:
            await closed_server(server)

    run_coro(loop, main())


# --------------------------------------------------------------------------- 10. sendfile

BIG = 50 * MiB
TLS_FILE = 8 * MiB


def _write_random_file(path, size: int, seed: int) -> str:
    rnd = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for left in range(size, 0, -4 * MiB):
            chunk = rnd.randbytes(min(4 * MiB, left))
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sendfile") / "big.bin"
    return path, _write_random_file(path, BIG, seed=10)


@pytest.fixture(scope="module")
def tls_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sendfile") / "tls.bin"
    return path, _write_random_file(path, TLS_FILE, seed=11)


async def _sink_server(loop, ctx=None):
    sinks = []

    def factory():
        sinks.append(Sink())
        return sinks[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[:2], sinks


def test_sendfile_50mib_plain_tcp(loop, big_file):
    path, digest = big_file

    async def main():
        server, addr, sinks = await _sink_server(loop)
        try:
            transport, _ = await loop.create_connection(asyncio.Protocol, *addr)
            with open(path, "rb") as f:
                sending = asyncio.create_task(loop.sendfile(transport, f))
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                assert not sending.done()  # 50 MiB take more than one socket buffer
                with pytest.raises(RuntimeError, match="unable to write; sendfile is in progress"):
                    transport.write(b"x")
                sent = await sending
                assert sent == BIG
                assert f.tell() == BIG
            assert not transport.is_closing()
            transport.write_eof()
            await until(lambda: sinks, "the server's protocol")
            assert await sinks[0].done == (BIG, digest)
            transport.close()
            with open(path, "rb") as f:
                with pytest.raises(RuntimeError, match="Transport is closing"):
                    await loop.sendfile(transport, f)
        finally:
            await closed_server(server)

    run_coro(loop, main(), timeout=20)


def test_sendfile_slice_native_only(loop, big_file):
    path, _ = big_file
    offset, count = 12_345, 7 * MiB + 3
    head = _payload(4 * MiB, seed=12)
    with open(path, "rb") as f:
        f.seek(offset)
        expected = _sha(head + f.read(count) + b"tail")

    async def main():
        server, addr, sinks = await _sink_server(loop)
        try:
            transport, proto = await loop.create_connection(Collector, *addr)
            # More than the socket takes at once: sendfile first waits for the buffer to drain.
            transport.write(head)
            assert transport.get_write_buffer_size() > 0
            with open(path, "rb") as f:
                sent = await loop.sendfile(transport, f, offset, count, fallback=False)
                assert sent == count
                assert f.tell() == offset + count
            assert transport.get_write_buffer_size() == 0
            # Reading was paused during the native sendfile, and is resumed after it.
            assert transport.is_reading()
            await until(lambda: sinks, "the server's protocol")
            sinks[0].transport.write(b"reply")
            assert await proto.received(5) == b"reply"
            transport.write(b"tail")  # sent after the file
            transport.write_eof()
            assert await sinks[0].done == (len(head) + count + 4, expected)
            transport.close()
            assert await proto.lost is None
        finally:
            await closed_server(server)

    run_coro(loop, main())


def test_sendfile_over_tls_uses_fallback(loop, certs, tls_file):
    path, digest = tls_file
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()

    async def main():
        server, addr, sinks = await _sink_server(loop, server_ctx)
        try:
            transport, proto = await loop.create_connection(
                asyncio.Protocol, *addr, ssl=client_ctx, server_hostname="localhost"
            )
            with open(path, "rb") as f:
                sent = await loop.sendfile(transport, f)
                assert sent == TLS_FILE
                assert f.tell() == TLS_FILE
            # The fallback gave the transport its protocol back.
            assert transport.get_protocol() is proto
            transport.close()  # flushes, then close_notify: the sink sees EOF after all data
            await until(lambda: sinks, "the server's protocol")
            assert await sinks[0].done == (TLS_FILE, digest)
        finally:
            await closed_server(server)

    run_coro(loop, main(), timeout=20)


def test_sendfile_over_tls_without_fallback(loop, certs, tls_file):
    path, _ = tls_file
    server_ctx, client_ctx = certs.server_ctx(), certs.client_ctx()

    async def main():
        server, addr, sinks = await _sink_server(loop, server_ctx)
        try:
            transport, _ = await loop.create_connection(
                asyncio.Protocol, *addr, ssl=client_ctx, server_hostname="localhost"
            )
            with open(path, "rb") as f:
                # asyncio 3.11: a TLS transport is FALLBACK-only, so with the fallback disabled
                # sendfile raises RuntimeError (not SendfileNotAvailableError), sending nothing.
                with pytest.raises(RuntimeError) as info:
                    await loop.sendfile(transport, f, fallback=False)
                assert not isinstance(info.value, asyncio.SendfileNotAvailableError)
                assert "fallback is disabled and native sendfile is not supported" in str(
                    info.value
                )
                assert f.tell() == 0
            # The connection is unharmed.
            transport.write(b"still here")
            transport.close()
            await until(lambda: sinks, "the server's protocol")
            assert await sinks[0].done == (10, _sha(b"still here"))
        finally:
            await closed_server(server)

    run_coro(loop, main())


def test_sendfile_not_a_regular_file(loop):
    """Plain TCP with an object that is no regular file: the native path is not available
    (this, not TLS, is where SendfileNotAvailableError comes from); the fallback sends it."""
    data = _payload(3 * MiB + 5, seed=13)

    async def main():
        server, addr, sinks = await _sink_server(loop)
        try:
            transport, proto = await loop.create_connection(Collector, *addr)
            with pytest.raises(asyncio.SendfileNotAvailableError, match="not a regular file"):
                await loop.sendfile(transport, io.BytesIO(data), fallback=False)
            buf = io.BytesIO(data)
            assert await loop.sendfile(transport, buf, 5) == len(data) - 5
            assert buf.tell() == len(data)
            # The fallback swapped the protocol and paused reading for the transfer only.
            assert transport.get_protocol() is proto
            assert transport.is_reading()
            transport.write_eof()
            await until(lambda: sinks, "the server's protocol")
            assert await sinks[0].done == (len(data) - 5, _sha(data[5:]))
            transport.close()
            assert await proto.lost is None
        finally:
            await closed_server(server)

    run_coro(loop, main())


def test_sendfile_unix_socket(loop, tls_file):
    path, digest = tls_file

    async def main():
        with tempfile.TemporaryDirectory() as d:
            sock_path = os.path.join(d, "sendfile.sock")
            sinks = []

            def factory():
                sinks.append(Sink())
                return sinks[-1]

            server = await loop.create_unix_server(factory, sock_path)
            try:
                transport, _ = await loop.create_unix_connection(asyncio.Protocol, sock_path)
                with open(path, "rb") as f:
                    assert await loop.sendfile(transport, f, fallback=False) == TLS_FILE
                transport.write_eof()
                await until(lambda: sinks, "the server's protocol")
                assert await sinks[0].done == (TLS_FILE, digest)
                transport.close()
            finally:
                await closed_server(server)

    run_coro(loop, main())


def test_sendfile_peer_resets_midway(loop, big_file):
    path, _ = big_file

    async def main():
        class ResetAfter1MiB(Sink):
            def data_received(self, data):
                super().data_received(data)
                if self.count >= 1 * MiB:
                    self.transport.abort()

        server = await loop.create_server(ResetAfter1MiB, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()[:2]
        try:
            transport, proto = await loop.create_connection(Collector, *addr)
            with open(path, "rb") as f:
                with pytest.raises(ConnectionError):
                    await loop.sendfile(transport, f)
                # The file position tells how much was sent before the error.
                assert 1 * MiB <= f.tell() < BIG
            await proto.lost
            assert transport.is_closing()
        finally:
            await closed_server(server)

    run_coro(loop, main())


def test_sendfile_plain_tcp_file_errors(loop, tmp_path):
    """Argument checks asyncio makes before sending (both loops run asyncio's code)."""
    path = tmp_path / "small.bin"
    path.write_bytes(b"abc")

    async def main():
        server, addr, sinks = await _sink_server(loop)
        try:
            transport, _ = await loop.create_connection(asyncio.Protocol, *addr)
            with open(path, "rb") as f:
                with pytest.raises(ValueError, match="offset must be a non-negative integer"):
                    await loop.sendfile(transport, f, -1)
                with pytest.raises(ValueError, match="count must be a positive integer"):
                    await loop.sendfile(transport, f, 0, 0)
            with open(path) as f:  # text mode
                with pytest.raises(ValueError, match="file should be opened in binary mode"):
                    await loop.sendfile(transport, f)
            # Sending from past the end sends nothing.
            transport.pause_reading()
            with open(path, "rb") as f:
                assert await loop.sendfile(transport, f, 10) == 0
                assert await loop.sendfile(transport, f, 1) == 2
            assert not transport.is_reading()  # sendfile leaves paused reading paused
            transport.write_eof()
            await until(lambda: sinks, "the server's protocol")
            assert await sinks[0].done == (2, _sha(b"bc"))
            transport.close()
        finally:
            await closed_server(server)

    run_coro(loop, main())
