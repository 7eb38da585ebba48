"""The gRPC server framework end to end, through grpcio and a raw h2 client.

vkeyd (health, reflection) serves the limit tests, since every limit has a
flag there; vkey-interop-server (grpc.testing.TestService) serves the tests
that need streaming payloads, metadata echo and compression. Each test
starts its own server; tearDown (vkharness) checks the exit code after
SIGTERM and that ASan/UBSan/LSan stayed quiet, which is how "the call was
freed" is checked for cancelled and timed-out calls.
"""

import gzip
import os
import signal
import socket
import threading
import time
import unittest

import h2raw
import vkharness  # grafts the generated stubs onto grpc's package path

import grpc  # noqa: E402
from grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc.testing import messages_pb2, test_pb2_grpc  # noqa: E402

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RP = messages_pb2.ResponseParameters
TIMEOUT = 15.0
# vkeyd reconnects to Redis with back-off.
REDIS_TIMEOUT = 45.0


def wait_until(cond, timeout=TIMEOUT, what="condition"):
    """Polls cond() until it is true; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def established(port):
    """Established TCP connections whose local port is `port` (IPv4)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[3] == "01":
                n += 1
    return n


def health_stub(target, options=()):
    channel = grpc.insecure_channel(target, options=list(options))
    return channel, health_pb2_grpc.HealthStub(channel)


def check(stub, service="", **kw):
    return stub.Check(health_pb2.HealthCheckRequest(service=service),
                      timeout=TIMEOUT, **kw)


class ServerCase(vkharness.ServerTestCase):
    """Helpers shared by both server kinds."""

    def setUp(self):
        super().setUp()
        self._channels = []

    def tearDown(self):
        for ch in self._channels:
            ch.close()
        super().tearDown()

    def channel(self, target, options=()):
        ch = grpc.insecure_channel(target, options=list(options))
        self._channels.append(ch)
        return ch

    def vkeyd(self, *flags, env=None):
        """vkeyd with its own redis-server, waited on until SERVING."""
        if not hasattr(self, "redis_url"):
            self.redis, self.redis_url = self.start_redis()
        server = self.start_vkeyd(*flags, redis_url=self.redis_url, env=env)
        stub = health_pb2_grpc.HealthStub(self.channel(server.target))

        def serving():
            try:
                return check(stub).status == SERVING
            except grpc.RpcError:
                return False
        wait_until(serving, REDIS_TIMEOUT, "vkeyd SERVING")
        return server

    def interop(self, env=None):
        """vkey-interop-server; like vkharness.start_interop, with env."""
        port = vkharness.free_port()
        p = self.spawn([vkharness.binary("vkey-interop-server"), "--port",
                        str(port)], "interop", env)
        vkharness.wait_for_port(port, p.proc)
        p.port = port
        p.target = f"127.0.0.1:{port}"
        return p

    def service_stub(self, server, options=()):
        return test_pb2_grpc.TestServiceStub(
            self.channel(server.target, options))

    def assertExitsCleanly(self, proc, timeout=30.0):
        """For a process we stopped ourselves: vkharness's tearDown checks
        the exit code only of processes still running."""
        code = proc.proc.wait(timeout=timeout)
        self.assertEqual(code, 0, proc.log()[-4000:])
        proc.kill()  # only closes its log now


# --- routing and health --------------------------------------------------------

class RoutingTest(ServerCase):

    def setUp(self):
        super().setUp()
        self.server = self.vkeyd()
        self.stub = health_pb2_grpc.HealthStub(
            self.channel(self.server.target))

    def test_health_check_serving(self):
        # The stub is generated from health.proto alone.
        resp = check(self.stub)
        self.assertEqual(resp.status, SERVING)

    def test_unknown_service(self):
        ch = self.channel(self.server.target)
        with self.assertRaises(grpc.RpcError) as ctx:
            ch.unary_unary("/no.such.Service/Check")(b"", timeout=TIMEOUT)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("unknown service", ctx.exception.details())

    def test_unknown_method_of_known_service(self):
        ch = self.channel(self.server.target)
        with self.assertRaises(grpc.RpcError) as ctx:
            ch.unary_unary("/grpc.health.v1.Health/Nope")(b"",
                                                           timeout=TIMEOUT)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("unknown method", ctx.exception.details())

    def test_rejection_reaches_a_client_still_sending(self):
        # The Trailers-Only answer must go out even though the client has
        # not half-closed; the RST_STREAM(NO_ERROR) that tells it to stop
        # sending must come after it, not instead of it.
        c = h2raw.H2Conn(self.server.port)
        try:
            sid = c.grpc_request("/grpc.health.v1.Health/Nope", b"",
                                 end_stream=False)
            r = c.read_response(sid)
            self.assertEqual(r.grpc_status, 12)
            self.assertIn("unknown method", r.grpc_message)
            c.wait(lambda: r.rst is not None)
            self.assertEqual(r.rst, h2raw.NO_ERROR)
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
        finally:
            c.close()


# --- concurrency -----------------------------------------------------------------

class ConcurrencyTest(ServerCase):

    def test_200_calls_over_4_connections(self):
        server = self.interop()
        stubs = [self.service_stub(server,
                                [("grpc.use_local_subchannel_pool", 1),
                                 ("vkey.test.channel", i)])
                 for i in range(4)]
        futures = []
        for i in range(200):
            req = messages_pb2.SimpleRequest(response_size=i * 37 % 5000)
            md = (("x-grpc-test-echo-initial", f"call-{i}"),)
            futures.append(stubs[i % 4].UnaryCall.future(req, metadata=md,
                                                          timeout=60))
        for i, f in enumerate(futures):
            resp = f.result()
            self.assertEqual(resp.payload.body, bytes(i * 37 % 5000))
            self.assertIn(("x-grpc-test-echo-initial", f"call-{i}"),
                          f.initial_metadata())
        self.assertEqual(established(server.port), 4)


class MaxStreamsTest(ServerCase):

    def setUp(self):
        super().setUp()
        self.server = self.vkeyd("--max-streams", "4")

    def test_client_queues_beyond_the_limit(self):
        ch = self.channel(self.server.target)
        stub = health_pb2_grpc.HealthStub(ch)
        futures = [stub.Check.future(health_pb2.HealthCheckRequest(),
                                     timeout=60) for _ in range(50)]
        for f in futures:
            self.assertEqual(f.result().status, SERVING)

    def open_watches(self, c, n):
        sids = [c.grpc_request("/grpc.health.v1.Health/Watch", b"")
                for _ in range(n)]
        c.wait(lambda: all(c.responses[s].messages() for s in sids))
        return sids

    def test_fifth_stream_refused_connection_usable(self):
        # Before the client acknowledges our SETTINGS, nghttp2 refuses the
        # extra stream with a stream error: RST_STREAM(REFUSED_STREAM).
        c = h2raw.H2Conn(self.server.port, ack_settings=False)
        try:
            self.assertEqual(
                c.server_settings[h2raw.SETTINGS_MAX_CONCURRENT_STREAMS], 4)
            sids = self.open_watches(c, 4)
            fifth = c.grpc_request("/grpc.health.v1.Health/Watch", b"")
            r = c.read_response(fifth)
            self.assertEqual(r.rst, h2raw.REFUSED_STREAM)
            self.assertIsNone(r.headers)
            # Still usable: the open streams go on, and once one is closed
            # a new one is accepted.
            c.rst_stream(sids[0])
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
            self.assertIsNone(c.goaway)
        finally:
            c.close()

    def test_fifth_stream_after_settings_ack(self):
        # Once the client has acknowledged SETTINGS, nghttp2 (1.52) treats
        # the extra stream as a connection error: GOAWAY(PROTOCOL_ERROR)
        # whose last-stream-id excludes it, so the client may retry it.
        # RFC 9113 §5.1.2 would allow a stream error; either is accepted.
        other = h2raw.H2Conn(self.server.port)
        c = h2raw.H2Conn(self.server.port)
        try:
            self.open_watches(c, 4)
            fifth = c.grpc_request("/grpc.health.v1.Health/Watch", b"")
            try:
                c.wait(lambda: c.responses[fifth].done or c.goaway)
            except h2raw.Closed:
                pass
            r = c.responses[fifth]
            if c.goaway is not None:
                self.assertEqual(c.goaway.error_code(), h2raw.PROTOCOL_ERROR)
                self.assertLess(c.goaway.last_stream_id(), fifth)
                self.assertIsNone(r.headers)
            else:
                self.assertIn(r.rst, (h2raw.REFUSED_STREAM,
                                      h2raw.PROTOCOL_ERROR))
                c.rst_stream(1)
                self.assertEqual(c.health_check().messages(),
                                 [h2raw.HEALTH_SERVING])
            # Other connections are not affected.
            self.assertEqual(other.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
        finally:
            c.close()
            other.close()


# --- limits ------------------------------------------------------------------------

class MessageLimitTest(ServerCase):

    def test_request_over_max_message(self):
        server = self.vkeyd("--max-message", "1000")
        stub = health_pb2_grpc.HealthStub(self.channel(server.target))
        with self.assertRaises(grpc.RpcError) as ctx:
            check(stub, service="x" * 2000)
        self.assertEqual(ctx.exception.code(),
                         grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("exceeds 1000 bytes", ctx.exception.details())
        # Just under the limit is fine (an unknown service is NOT_FOUND).
        with self.assertRaises(grpc.RpcError) as ctx:
            check(stub, service="x" * 900)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(check(stub).status, SERVING)

    def test_response_over_max_message(self):
        # The interop server runs with the default 4 MiB limit and allows
        # payloads of 4 MiB, so a 4 MiB payload makes a response a few
        # bytes over the limit: its vk_call_send fails with VK_ETOOBIG and
        # the handler ends the call, nothing is sent, nothing hangs.
        server = self.interop()
        stub = self.service_stub(server, [("grpc.max_receive_message_length",
                                        -1)])
        with self.assertRaises(grpc.RpcError) as ctx:
            stub.UnaryCall(messages_pb2.SimpleRequest(
                response_size=4 * 1024 * 1024), timeout=TIMEOUT)
        self.assertEqual(ctx.exception.code(),
                         grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("send", ctx.exception.details())
        # The same on a stream, after a message went out: the trailers
        # carry the error.
        call = stub.StreamingOutputCall(messages_pb2.StreamingOutputCallRequest(
            response_parameters=[RP(size=10), RP(size=4 * 1024 * 1024)]),
            timeout=TIMEOUT)
        got = []
        with self.assertRaises(grpc.RpcError) as ctx:
            for resp in call:
                got.append(len(resp.payload.body))
        self.assertEqual(got, [10])
        self.assertEqual(ctx.exception.code(),
                         grpc.StatusCode.RESOURCE_EXHAUSTED)
        resp = stub.UnaryCall(messages_pb2.SimpleRequest(response_size=4),
                              timeout=TIMEOUT)
        self.assertEqual(resp.payload.body, bytes(4))


class HeaderLimitTest(ServerCase):

    def test_metadata_over_max_header_list(self):
        server = self.vkeyd("--max-header-list", "2048")
        stub = health_pb2_grpc.HealthStub(self.channel(server.target))
        with self.assertRaises(grpc.RpcError) as ctx:
            check(stub, metadata=(("x-big", "a" * 4096),))
        self.assertEqual(ctx.exception.code(),
                         grpc.StatusCode.RESOURCE_EXHAUSTED)
        # Under the limit on the same channel: fine.
        self.assertEqual(check(stub, metadata=(("x-small", "a" * 512),))
                         .status, SERVING)
        # The raw client gets the server's own answer (grpcio might refuse
        # locally): a Trailers-Only RESOURCE_EXHAUSTED on that stream only.
        c = h2raw.H2Conn(server.port)
        try:
            sid = c.grpc_request(h2raw.HEALTH_CHECK, b"",
                                 metadata=[("x-big", "a" * 4096)])
            r = c.read_response(sid)
            self.assertEqual(r.grpc_status, 8)
            self.assertIn("metadata exceeds 2048", r.grpc_message)
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
        finally:
            c.close()


class ConnectionLimitTest(ServerCase):

    def test_max_connections(self):
        # Two loops: the limit is the instance's, not each loop's.
        server = self.vkeyd("--max-connections", "3", "--loops", "2")
        # vkeyd() left a grpcio channel open: close it, and wait until the
        # server has let it go.
        for ch in self._channels:
            ch.close()
        self._channels = []
        wait_until(lambda: established(server.port) == 0, what="no conns")
        conns = [h2raw.H2Conn(server.port) for _ in range(3)]
        try:
            for c in conns:
                self.assertEqual(c.health_check().messages(),
                                 [h2raw.HEALTH_SERVING])
            # The 4th is accepted by the kernel and closed at once, without
            # a byte of HTTP/2.
            s = socket.create_connection(("127.0.0.1", server.port))
            try:
                s.sendall(h2raw.PREFACE + h2raw.settings_frame())
            except OSError:
                pass
            self.assertEqual(h2raw.wait_closed(s), b"")
            s.close()
            for c in conns:
                self.assertEqual(c.health_check().messages(),
                                 [h2raw.HEALTH_SERVING])
            # Close one: a new one gets in (once the server noticed).
            conns.pop().close()

            def accepted():
                try:
                    c = h2raw.H2Conn(server.port, timeout=2)
                except (h2raw.Closed, OSError, TimeoutError):
                    return None
                conns.append(c)
                return c
            c = wait_until(accepted, what="a new connection")
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
        finally:
            for c in conns:
                c.close()


class IdleTimeoutTest(ServerCase):

    def setUp(self):
        super().setUp()
        self.server = self.vkeyd("--idle-timeout", "300")

    def test_idle_connection_gets_goaway_then_eof(self):
        c = h2raw.H2Conn(self.server.port)
        try:
            frames = c.read_until_closed(timeout=10)
            self.assertTrue(c.eof, "connection still open")
            goaways = [f for f in frames if f.type == h2raw.GOAWAY]
            self.assertEqual(len(goaways), 1)
            self.assertEqual(goaways[0].error_code(), h2raw.NO_ERROR)
        finally:
            c.close()

    def test_open_stream_keeps_connection(self):
        c = h2raw.H2Conn(self.server.port)
        try:
            sid = c.grpc_request("/grpc.health.v1.Health/Watch", b"")
            c.wait(lambda: c.responses[sid].messages())
            # Several idle periods pass with the stream open: no GOAWAY.
            with self.assertRaises(TimeoutError):
                c.wait(lambda: c.goaway is not None, timeout=1.5)
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
            # Once the last stream is gone, the idle timer runs again.
            c.rst_stream(sid)
            c.read_until_closed(timeout=10)
            self.assertTrue(c.eof)
            self.assertIsNotNone(c.goaway)
        finally:
            c.close()


# --- deadlines and cancellation --------------------------------------------

class DeadlineCancelTest(ServerCase):

    def setUp(self):
        super().setUp()
        self.server = self.interop()
        self.stub = self.service_stub(self.server)

    def slow_stream_request(self, n=50, interval_us=100000):
        return messages_pb2.StreamingOutputCallRequest(
            response_parameters=[RP(size=10, interval_us=interval_us)
                                 for _ in range(n)])

    def assertServing(self):
        resp = self.stub.UnaryCall(messages_pb2.SimpleRequest(
            response_size=3), timeout=TIMEOUT)
        self.assertEqual(resp.payload.body, bytes(3))

    def test_client_deadline(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            for _ in self.stub.StreamingOutputCall(self.slow_stream_request(),
                                                   timeout=0.2):
                pass
        self.assertEqual(ctx.exception.code(),
                         grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertServing()

    def test_server_enforces_grpc_timeout(self):
        # A raw client that does not cancel by itself: the server's own
        # deadline ends the call with DEADLINE_EXCEEDED in the trailers, and
        # the handler's pending interval timer is dropped (ASan at exit).
        c = h2raw.H2Conn(self.server.port)
        try:
            sid = c.grpc_request("/grpc.testing.TestService/StreamingOutputCall",
                                 self.slow_stream_request().SerializeToString(),
                                 timeout="200m")
            r = c.read_response(sid)
            self.assertEqual(r.grpc_status, 4, r.status_fields())
            self.assertLess(len(r.messages()), 50)
            # Malformed grpc-timeout: refused up front.
            sid = c.grpc_request("/grpc.testing.TestService/UnaryCall", b"",
                                 timeout="forever")
            self.assertEqual(c.read_response(sid).grpc_status, 3)
        finally:
            c.close()
        self.assertServing()

    def test_client_cancel_mid_stream(self):
        for _ in range(5):
            call = self.stub.StreamingOutputCall(
                self.slow_stream_request(interval_us=20000), timeout=60)
            it = iter(call)
            next(it)
            next(it)
            call.cancel()
            self.assertEqual(call.code(), grpc.StatusCode.CANCELLED)
        self.assertServing()
        # Bidi too, cancelled while the server waits for more requests.
        stop = threading.Event()

        def requests():
            yield messages_pb2.StreamingOutputCallRequest(
                response_parameters=[RP(size=5)])
            stop.wait(60)

        call = self.stub.FullDuplexCall(requests(), timeout=60)
        try:
            self.assertEqual(len(next(call).payload.body), 5)
            call.cancel()
            self.assertEqual(call.code(), grpc.StatusCode.CANCELLED)
        finally:
            stop.set()
        self.assertServing()


# --- metadata and compression ----------------------------------------------

class MetadataCompressionTest(ServerCase):

    BIN = b"\x00\x01\xfe\xff\x80 caf\xc3\xa9 \xe2\x82\xac"

    def setUp(self):
        super().setUp()
        self.server = self.interop()
        self.stub = self.service_stub(self.server)

    def test_echo_metadata_unary(self):
        md = (("x-grpc-test-echo-initial", "initial value"),
              ("x-grpc-test-echo-trailing-bin", self.BIN))
        resp, call = self.stub.UnaryCall.with_call(
            messages_pb2.SimpleRequest(response_size=8), metadata=md,
            timeout=TIMEOUT)
        self.assertEqual(resp.payload.body, bytes(8))
        self.assertIn(("x-grpc-test-echo-initial", "initial value"),
                      call.initial_metadata())
        self.assertIn(("x-grpc-test-echo-trailing-bin", self.BIN),
                      call.trailing_metadata())

    def test_echo_metadata_streaming_and_error(self):
        md = (("x-grpc-test-echo-initial", "stream"),
              ("x-grpc-test-echo-trailing-bin", self.BIN))
        call = self.stub.FullDuplexCall(iter([
            messages_pb2.StreamingOutputCallRequest(
                response_parameters=[RP(size=3)])]), metadata=md,
            timeout=TIMEOUT)
        self.assertEqual([len(r.payload.body) for r in call], [3])
        self.assertIn(("x-grpc-test-echo-initial", "stream"),
                      call.initial_metadata())
        self.assertIn(("x-grpc-test-echo-trailing-bin", self.BIN),
                      call.trailing_metadata())
        # A failing call (Trailers-Only) still carries both.
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.UnaryCall(messages_pb2.SimpleRequest(
                response_status=messages_pb2.EchoStatus(
                    code=2, message="caf\u00e9 \u2603 failed")),
                metadata=md, timeout=TIMEOUT)
        err = ctx.exception
        self.assertEqual(err.code(), grpc.StatusCode.UNKNOWN)
        self.assertEqual(err.details(), "caf\u00e9 \u2603 failed")
        self.assertIn(("x-grpc-test-echo-initial", "stream"),
                      err.initial_metadata() + err.trailing_metadata())
        self.assertIn(("x-grpc-test-echo-trailing-bin", self.BIN),
                      err.trailing_metadata())

    def test_gzip_request(self):
        req = messages_pb2.SimpleRequest(
            response_size=100, expect_compressed=messages_pb2.BoolValue(
                value=True),
            payload=messages_pb2.Payload(body=bytes(50000)))
        resp = self.stub.UnaryCall(req, compression=grpc.Compression.Gzip,
                                   timeout=TIMEOUT)
        self.assertEqual(resp.payload.body, bytes(100))
        # Uncompressed but expecting compression: the server saw the flag.
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.UnaryCall(req, timeout=TIMEOUT)
        self.assertEqual(ctx.exception.code(),
                         grpc.StatusCode.INVALID_ARGUMENT)

    def test_gzip_response(self):
        req = messages_pb2.SimpleRequest(
            response_size=70000,
            response_compressed=messages_pb2.BoolValue(value=True))
        resp = self.stub.UnaryCall(req, timeout=TIMEOUT)
        self.assertEqual(resp.payload.body, bytes(70000))
        # On the wire: the compressed flag, grpc-encoding gzip, and a body
        # much smaller than 70000 zeros.
        c = h2raw.H2Conn(self.server.port)
        try:
            sid = c.grpc_request(
                "/grpc.testing.TestService/UnaryCall",
                req.SerializeToString(),
                metadata=[("grpc-accept-encoding", "gzip")])
            r = c.read_response(sid)
            self.assertEqual(r.grpc_status, 0)
            self.assertEqual(r.headers.get("grpc-encoding"), "gzip")
            self.assertEqual(r.data[0], 1)
            self.assertLess(len(r.data), 5000)
            (msg,) = r.messages()
            got = messages_pb2.SimpleResponse.FromString(gzip.decompress(msg))
            self.assertEqual(got.payload.body, bytes(70000))
        finally:
            c.close()


# --- back-pressure ---------------------------------------------------------

class SlowReaderTest(ServerCase):

    def test_slow_reader_memory_bounded(self):
        # ASan's quarantine keeps freed memory resident, which would hide
        # the signal: 50 MB flow through the server either way.
        asan = os.environ.get("ASAN_OPTIONS",
                              "detect_leaks=1:abort_on_error=0")
        server = self.interop(env={"ASAN_OPTIONS":
                                   asan + ":quarantine_size_mb=0"})
        stub = self.service_stub(server)
        self.assertEqual(stub.UnaryCall(messages_pb2.SimpleRequest(
            response_size=1000), timeout=TIMEOUT).payload.body, bytes(1000))
        base = rss_kib(server.proc.pid)
        size = 256 * 1024
        n = 200  # 50 MiB in all
        call = stub.StreamingOutputCall(messages_pb2.StreamingOutputCallRequest(
            response_parameters=[RP(size=size) for _ in range(n)]),
            timeout=120)
        it = iter(call)
        peak = 0
        count = 0
        for resp in it:
            self.assertEqual(resp.payload.body, bytes(size))
            count += 1
            if count == 1:
                # Without back-pressure the server would now queue all 50
                # MiB; give it the time to, then look.
                time.sleep(1.0)
            if count % 10 == 0:
                peak = max(peak, rss_kib(server.proc.pid))
                time.sleep(0.05)
        self.assertEqual(count, n)
        self.assertEqual(call.code(), grpc.StatusCode.OK)
        growth_mb = (peak - base) / 1024
        self.assertLess(growth_mb, 30, f"RSS grew {growth_mb:.1f} MB")


# --- graceful drain --------------------------------------------------------

class DrainTest(ServerCase):

    def test_sigterm_lets_in_flight_call_finish(self):
        server = self.interop()
        stub = self.service_stub(server)
        call = stub.StreamingOutputCall(messages_pb2.StreamingOutputCallRequest(
            response_parameters=[RP(size=7, interval_us=100000)
                                 for _ in range(10)]), timeout=60)
        it = iter(call)
        got = [len(next(it).payload.body)]
        server.signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", server.port),
                                         timeout=1).close()
                return False
            except ConnectionRefusedError:
                return True
        wait_until(refused, what="new connections refused")
        got += [len(r.payload.body) for r in it]
        self.assertEqual(got, [7] * 10)
        self.assertEqual(call.code(), grpc.StatusCode.OK)
        self.assertExitsCleanly(server)

    def test_sigterm_cancels_call_past_drain_timeout(self):
        server = self.vkeyd("--drain-timeout", "500")
        stub = health_pb2_grpc.HealthStub(self.channel(server.target))
        call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=60)
        it = iter(call)
        self.assertEqual(next(it).status, SERVING)
        server.signal(signal.SIGTERM)
        # Health goes NOT_SERVING first, then the drain timeout cancels the
        # call with UNAVAILABLE in real trailers (not just a closed socket).
        self.assertEqual(next(it).status, NOT_SERVING)
        with self.assertRaises(grpc.RpcError) as ctx:
            next(it)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(ctx.exception.details(), "server shutting down")
        self.assertExitsCleanly(server)


# --- health follows Redis --------------------------------------------------

class HealthWatchTest(ServerCase):

    def test_watch_follows_redis(self):
        server = self.vkeyd()
        stub = health_pb2_grpc.HealthStub(self.channel(server.target))
        call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=120)
        it = iter(call)
        self.assertEqual(next(it).status, SERVING)
        port = self.redis.port
        self.assertIsNotNone(self.redis.stop())
        self.assertEqual(next(it).status, NOT_SERVING)
        # The same port again: vkeyd reconnects by itself.
        data = os.path.join(self.workdir, "redis")
        p = self.spawn(["redis-server", "--port", str(port), "--bind",
                        "127.0.0.1", "--dir", data, "--appendonly", "yes",
                        "--save", ""], "redis")
        vkharness.wait_for_port(port, p.proc)
        self.assertEqual(next(it).status, SERVING)
        call.cancel()
        self.assertEqual(check(stub).status, SERVING)


def thread_ticks(pid, name):
    """CPU ticks (utime + stime) of `pid`'s threads called `name`."""
    ticks = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return ticks


class LoopsTest(ServerCase):
    """--loops: connections dealt to several event loops, one process."""

    def test_connections_are_dealt_to_every_loop(self):
        server = self.vkeyd("--loops", "3")
        names = set()
        for tid in os.listdir(f"/proc/{server.proc.pid}/task"):
            with open(f"/proc/{server.proc.pid}/task/{tid}/comm") as f:
                names.add(f.read().strip())
        self.assertTrue({"vkeyd-loop1", "vkeyd-loop2"} <= names, names)
        before = {n: thread_ticks(server.proc.pid, n)
                  for n in ("vkeyd-loop1", "vkeyd-loop2")}
        # Six connections of their own (a local subchannel pool each),
        # opened one after the other: two on each loop.
        stubs = [health_pb2_grpc.HealthStub(self.channel(
            server.target, [("grpc.use_local_subchannel_pool", 1)]))
            for _ in range(6)]
        # Enough calls that each loop's share is several 10 ms ticks of CPU
        # even in a Release build.
        for _ in range(1000):
            for stub in stubs:
                self.assertEqual(check(stub).status, SERVING)
        for name, ticks in before.items():
            self.assertGreater(thread_ticks(server.proc.pid, name), ticks,
                               f"{name} served nothing")

    def test_each_loop_drains_on_sigterm(self):
        server = self.vkeyd("--loops", "2")
        stubs = [health_pb2_grpc.HealthStub(self.channel(
            server.target, [("grpc.use_local_subchannel_pool", 1)]))
            for _ in range(4)]
        for stub in stubs:
            self.assertEqual(check(stub).status, SERVING)
        self.assertEqual(server.stop(), 0)
        self.assertIn("loop 1 drained", server.log())
        self.assertIn("loop 0 drained", server.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
