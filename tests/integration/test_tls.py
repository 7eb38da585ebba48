"""vkeyd over TLS: ALPN h2 only, TLS 1.2 or later, a throwaway self-signed
certificate made with the openssl command line."""

import os
import socket
import ssl
import subprocess
import time
import unittest

import h2raw
import vkharness  # grafts the generated stubs onto grpc's package path

import grpc  # noqa: E402
from grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

SERVING = health_pb2.HealthCheckResponse.SERVING
REDIS_TIMEOUT = 45.0


def make_cert(workdir):
    cert = os.path.join(workdir, "cert.pem")
    key = os.path.join(workdir, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out",
         cert, "-days", "2", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


class TlsTest(vkharness.ServerTestCase):

    def setUp(self):
        super().setUp()
        self.cert, self.key = make_cert(self.workdir)
        self.redis, url = self.start_redis()
        self.redis_url = url
        self.tls_port = vkharness.free_port()
        self.server = self.start_vkeyd(
            "--tls-listen", f"127.0.0.1:{self.tls_port}", "--tls-cert",
            self.cert, "--tls-key", self.key, redis_url=url)
        vkharness.wait_for_port(self.tls_port, self.server.proc)
        with open(self.cert, "rb") as f:
            self.root = f.read()
        self.assertServing()

    def secure_stub(self):
        creds = grpc.ssl_channel_credentials(root_certificates=self.root)
        channel = grpc.secure_channel(
            f"127.0.0.1:{self.tls_port}", creds,
            options=[("grpc.ssl_target_name_override", "localhost")])
        return channel, health_pb2_grpc.HealthStub(channel)

    def assertServing(self, timeout=REDIS_TIMEOUT):
        """A fresh TLS channel gets SERVING (polled: Redis comes up)."""
        deadline = time.monotonic() + timeout
        while True:
            channel, stub = self.secure_stub()
            with channel:
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(),
                                      timeout=5)
                    if resp.status == SERVING:
                        return
                except grpc.RpcError as e:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"TLS health check: {e}")
            if time.monotonic() > deadline:
                raise AssertionError("not SERVING over TLS")
            time.sleep(0.05)

    def s_client(self, *args):
        """openssl s_client against the TLS port; returns (rc, output)."""
        p = subprocess.run(
            ["openssl", "s_client", "-connect",
             f"127.0.0.1:{self.tls_port}", "-servername", "localhost",
             *args],
            input=b"", capture_output=True, timeout=30)
        out = (p.stdout + p.stderr).decode("latin-1")
        return p.returncode, out

    def test_grpc_over_tls(self):
        channel, stub = self.secure_stub()
        with channel:
            for _ in range(3):
                self.assertEqual(stub.Check(health_pb2.HealthCheckRequest(),
                                            timeout=10).status, SERVING)
            with self.assertRaises(grpc.RpcError) as ctx:
                stub.Check(health_pb2.HealthCheckRequest(service="nope"),
                           timeout=10)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_alpn_h2_and_tls13(self):
        rc, out = self.s_client("-alpn", "h2")
        self.assertEqual(rc, 0, out)
        self.assertIn("ALPN protocol: h2", out)
        self.assertIn("New, TLSv1.3, Cipher is", out)
        # TLS 1.2 is still allowed (RFC 9113 §9.2), with h2.
        rc, out = self.s_client("-alpn", "h2", "-tls1_2")
        self.assertEqual(rc, 0, out)
        self.assertIn("ALPN protocol: h2", out)
        self.assertIn("New, TLSv1.2, Cipher is", out)

    def test_http11_only_alpn_refused(self):
        rc, out = self.s_client("-alpn", "http/1.1")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("no application protocol", out)
        self.assertNotIn("ALPN protocol: http/1.1", out)
        self.assertServing()

    def test_no_alpn_closed_after_handshake(self):
        # Without ALPN the handshake itself succeeds (the callback is not
        # asked), but the server will not speak HTTP/2 on it: it closes
        # without sending its SETTINGS.
        ctx = ssl.create_default_context(cafile=self.cert)
        with socket.create_connection(("127.0.0.1", self.tls_port),
                                      timeout=10) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    self.assertIsNone(s.selected_alpn_protocol())
                    s.sendall(h2raw.PREFACE + h2raw.settings_frame())
                    self.assertEqual(s.recv(100), b"")
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                pass  # closed during or right after the handshake
        self.assertServing()

    def test_tls11_refused(self):
        rc, out = self.s_client("-alpn", "h2", "-tls1_1", "-cipher",
                                "DEFAULT@SECLEVEL=0")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("alert protocol version", out)
        self.assertIn("Cipher is (NONE)", out)
        self.assertServing()

    def test_plaintext_h2c_to_tls_port(self):
        with socket.create_connection(("127.0.0.1", self.tls_port),
                                      timeout=10) as s:
            try:
                s.sendall(h2raw.PREFACE + h2raw.settings_frame())
            except OSError:
                pass
            got = h2raw.wait_closed(s, 10)
        # At most a TLS alert record; never an HTTP/2 frame.
        self.assertFalse(any(f.type == h2raw.SETTINGS
                             for f in h2raw.frames_in(got)), got)
        if got:
            self.assertEqual(got[0], 0x15, got)  # TLS alert
        self.assertServing()
        # The h2c port is unaffected.
        c = h2raw.H2Conn(self.server.port)
        try:
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
        finally:
            c.close()


    def test_idle_connection_without_handshake_closed(self):
        # A client that connects to the TLS port and never says hello: the
        # idle timer's GOAWAY cannot go out before the handshake, so the
        # server must close the connection on its own a period later.
        tls_port = vkharness.free_port()
        server = self.start_vkeyd(
            "--tls-listen", f"127.0.0.1:{tls_port}", "--tls-cert", self.cert,
            "--tls-key", self.key, "--idle-timeout", "300",
            redis_url=self.redis_url, name="vkeyd-idle")
        vkharness.wait_for_port(tls_port, server.proc)
        with socket.create_connection(("127.0.0.1", tls_port),
                                      timeout=10) as s:
            self.assertEqual(h2raw.wait_closed(s, 10), b"")
        # A handshake that stops half-way (ClientHello only) likewise.
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.set_alpn_protocols(["h2"])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with self.assertRaises(ssl.SSLWantReadError):
            obj.do_handshake()
        with socket.create_connection(("127.0.0.1", tls_port),
                                      timeout=10) as s:
            s.sendall(outgoing.read())
            got = h2raw.wait_closed(s, 10)
            self.assertEqual(got[0], 0x16)  # the server's handshake flight


if __name__ == "__main__":
    unittest.main(verbosity=2)
