"""Hostile and broken clients, over raw sockets (h2raw).

For each abuse the server answers or closes that one connection, a separate
grpcio Health Check succeeds afterwards, and at teardown the process exits 0
with no sanitizer report (vkharness's tearDown checks both).
"""

import os
import random
import signal
import socket
import struct
import time
import unittest

import h2raw
import vkharness  # grafts the generated stubs onto grpc's package path

import grpc  # noqa: E402
from grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc.reflection.v1 import reflection_pb2  # noqa: E402
from grpc.testing import messages_pb2  # noqa: E402

SERVING = health_pb2.HealthCheckResponse.SERVING
TIMEOUT = 15.0
REDIS_TIMEOUT = 45.0
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
STREAMING_OUTPUT = "/grpc.testing.TestService/StreamingOutputCall"


def wait_until(cond, timeout=TIMEOUT, what="condition"):
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


def server_send_queue(port):
    """Bytes queued in the kernel by the server's established sockets."""
    total = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
                total += int(fields[4].split(":")[0], 16)
    return total


def established(port):
    """Established TCP connections whose local port is `port` (IPv4)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
                n += 1
    return n


def raw_socket(port):
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def send_quietly(sock, data):
    """sendall that tolerates the server closing on us half-way."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def asan_without_quarantine():
    # ASan's quarantine keeps freed memory resident, which would hide the
    # difference between streaming and buffering in RSS.
    asan = os.environ.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    return {"ASAN_OPTIONS": asan + ":quarantine_size_mb=0"}


class HostileCase(vkharness.ServerTestCase):

    def start(self, *flags, env=None):
        """vkeyd with its own redis, waited on until SERVING."""
        self.redis, url = self.start_redis()
        self.server = self.start_vkeyd(*flags, redis_url=url, env=env)
        self.assertHealthy(timeout=REDIS_TIMEOUT)
        return self.server

    def start_interop(self, env=None):
        port = vkharness.free_port()
        p = self.spawn([vkharness.binary("vkey-interop-server"), "--port",
                        str(port)], "interop", env)
        vkharness.wait_for_port(port, p.proc)
        p.port = port
        p.target = f"127.0.0.1:{port}"
        self.server = p
        return p

    def assertHealthy(self, timeout=TIMEOUT):
        """A fresh grpcio channel gets SERVING (polled while Redis comes
        up at start)."""
        deadline = time.monotonic() + timeout
        while True:
            with grpc.insecure_channel(self.server.target) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(),
                                      timeout=5)
                    if resp.status == SERVING:
                        return
                except grpc.RpcError as e:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"health check failed: {e}")
            if time.monotonic() > deadline:
                raise AssertionError("not SERVING")
            time.sleep(0.05)

    def assertClosedSoon(self, sock, timeout=TIMEOUT):
        """The server closes the connection; returns what it sent."""
        try:
            return h2raw.wait_closed(sock, timeout)
        except TimeoutError:
            self.fail("server kept the connection open")


class GarbageTest(HostileCase):

    def setUp(self):
        super().setUp()
        self.start()

    def test_random_bytes(self):
        rnd = random.Random(1234)
        for n in (1, 24, 100, 5000, 100000):
            s = raw_socket(self.server.port)
            send_quietly(s, bytes(rnd.getrandbits(8) for _ in range(n)))
            got = self.assertClosedSoon(s)
            # Nothing that looks like an answer to a request.
            self.assertNotIn(b"HTTP/1.1 200", got)
            s.close()
        self.assertHealthy()

    def test_random_frames_after_preface(self):
        rnd = random.Random(99)
        for _ in range(20):
            s = raw_socket(self.server.port)
            send_quietly(s, h2raw.PREFACE + h2raw.settings_frame())
            body = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(
                1, 3000)))
            send_quietly(s, body)
            s.shutdown(socket.SHUT_WR)
            self.assertClosedSoon(s)
            s.close()
        self.assertHealthy()

    def test_http1_request(self):
        s = raw_socket(self.server.port)
        send_quietly(s, b"GET / HTTP/1.1\r\nHost: localhost\r\n"
                        b"Connection: keep-alive\r\n\r\n")
        got = self.assertClosedSoon(s)
        self.assertFalse(got.startswith(b"HTTP/1.1 2"), got[:100])
        s.close()
        # An h2c upgrade attempt fares no better.
        s = raw_socket(self.server.port)
        send_quietly(s, b"GET / HTTP/1.1\r\nHost: localhost\r\n"
                        b"Connection: Upgrade, HTTP2-Settings\r\n"
                        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__"
                        b"\r\n\r\n")
        got = self.assertClosedSoon(s)
        self.assertNotIn(b"101 Switching", got)
        s.close()
        self.assertHealthy()

    def test_truncated_preface_then_close(self):
        for n in (1, 10, len(h2raw.PREFACE) - 1):
            s = raw_socket(self.server.port)
            s.sendall(h2raw.PREFACE[:n])
            s.close()
        # One that pauses half-way: the server keeps the partial preface
        # and the connection works once the rest arrives.
        c = h2raw.H2Conn(self.server.port, handshake=False,
                         ack_settings=False)
        try:
            c.send(h2raw.PREFACE[:12])
            c.wait(lambda: c.server_settings_seen)  # h2c: sent on accept
            c.send(h2raw.PREFACE[12:] + h2raw.settings_frame() +
                   h2raw.settings_frame(ack=True))
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
        finally:
            c.close()
        self.assertHealthy()


class FloodTest(HostileCase):

    def setUp(self):
        super().setUp()
        self.start()

    def flood(self, one_frame, count=20000):
        s = raw_socket(self.server.port)
        send_quietly(s, h2raw.PREFACE + h2raw.settings_frame())
        # Thousands without reading a single reply.
        send_quietly(s, one_frame * count)
        got = self.assertClosedSoon(s)
        s.close()
        goaways = [f for f in h2raw.frames_in(got) if f.type == h2raw.GOAWAY]
        return goaways

    def test_settings_flood(self):
        goaways = self.flood(h2raw.settings_frame(
            [(h2raw.SETTINGS_INITIAL_WINDOW_SIZE, 65535)]))
        self.assertEqual(len(goaways), 1)
        self.assertNotEqual(goaways[0].error_code(), h2raw.NO_ERROR)
        self.assertHealthy()

    def test_ping_flood(self):
        goaways = self.flood(h2raw.frame(h2raw.PING, 0, 0, b"pingpong"))
        self.assertEqual(len(goaways), 1)
        self.assertNotEqual(goaways[0].error_code(), h2raw.NO_ERROR)
        self.assertHealthy()

    def test_rapid_reset(self):
        # HEADERS opening a stream, RST_STREAM at once: many times over, in
        # one write, never reading. Each stream's call must be freed (LSan
        # at exit); nghttp2 may also call it a flood and close.
        c = h2raw.H2Conn(self.server.port)
        block = c.request_headers(h2raw.HEALTH_CHECK)
        burst = bytearray()
        sid = 1
        for _ in range(5000):
            burst += h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS, sid, block)
            burst += h2raw.frame(h2raw.RST_STREAM, 0, sid,
                                 struct.pack(">I", h2raw.CANCEL))
            sid += 2
        alive = send_quietly(c.sock, bytes(burst))
        # Either still usable (then a normal call works on it) or closed.
        if alive:
            try:
                c.next_stream_id = sid
                r = c.health_check()
                self.assertEqual(r.messages(), [h2raw.HEALTH_SERVING])
            except (h2raw.Closed, OSError):
                pass
        c.close()
        # Full requests (END_STREAM) reset before their answer is read.
        c = h2raw.H2Conn(self.server.port)
        burst = bytearray()
        for i in range(2000):
            sid = 1 + 2 * i
            burst += h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS, sid, block)
            burst += h2raw.frame(h2raw.DATA, h2raw.END_STREAM, sid,
                                 h2raw.grpc_message(b""))
            burst += h2raw.frame(h2raw.RST_STREAM, 0, sid,
                                 struct.pack(">I", h2raw.CANCEL))
        send_quietly(c.sock, bytes(burst))
        c.close()
        self.assertHealthy()


class MessageTest(HostileCase):

    def setUp(self):
        super().setUp()
        self.start("--max-header-list", "4096")

    def test_4gib_message_prefix(self):
        c = h2raw.H2Conn(self.server.port)
        try:
            sid = c.new_stream_id()
            c.send_headers(sid, c.request_headers(h2raw.HEALTH_CHECK))
            c.send_data(sid, h2raw.grpc_message(b"", announce=0xFFFFFFFF))
            r = c.read_response(sid)
            # Refused from the prefix alone: nothing was buffered.
            self.assertEqual(r.grpc_status, 8, r.status_fields())
            self.assertIn("exceeds", r.grpc_message)
            # The client keeps sending its "message": dropped, and the
            # connection stays fine.
            try:
                c.send_data(sid, b"\0" * 200000)
            except OSError:
                pass
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
        finally:
            c.close()
        self.assertHealthy()

    def test_message_split_across_many_frames(self):
        # A legal message, 1 byte per DATA frame: reassembled correctly.
        c = h2raw.H2Conn(self.server.port)
        try:
            body = health_pb2.HealthCheckRequest(service="").SerializeToString()
            msg = h2raw.grpc_message(body)
            sid = c.new_stream_id()
            c.send_headers(sid, c.request_headers(h2raw.HEALTH_CHECK))
            for i in range(len(msg)):
                c.send_frame(h2raw.DATA, 0, sid, msg[i:i + 1])
            c.send_frame(h2raw.DATA, h2raw.END_STREAM, sid)
            r = c.read_response(sid)
            self.assertEqual(r.grpc_status, 0)
            self.assertEqual(r.messages(), [h2raw.HEALTH_SERVING])
            # A truncated message (END_STREAM inside it) is an error.
            sid = c.new_stream_id()
            c.send_headers(sid, c.request_headers(h2raw.HEALTH_CHECK))
            c.send_data(sid, h2raw.grpc_message(b"abc")[:6], end_stream=True)
            self.assertEqual(c.read_response(sid).grpc_status, 13)
            # A bad compressed flag.
            sid = c.new_stream_id()
            c.send_headers(sid, c.request_headers(h2raw.HEALTH_CHECK))
            c.send_data(sid, b"\x07\0\0\0\0", end_stream=True)
            self.assertEqual(c.read_response(sid).grpc_status, 13)
        finally:
            c.close()
        self.assertHealthy()

    def test_header_list_over_limit(self):
        c = h2raw.H2Conn(self.server.port)
        try:
            # Over our 4096, in one HEADERS frame.
            sid = c.grpc_request(h2raw.HEALTH_CHECK, b"",
                                 metadata=[("x-big", "v" * 8000)])
            r = c.read_response(sid)
            self.assertEqual(r.grpc_status, 8, r.status_fields())
            # Many small fields adding up, spread over CONTINUATION frames.
            sid = c.new_stream_id()
            block = c.request_headers(h2raw.HEALTH_CHECK, [
                (f"x-f{i}", "v" * 50) for i in range(600)])
            # Five CONTINUATIONs: within what nghttp2 accepts (see below).
            size = len(block) // 6 + 1
            first, rest = block[:size], block[size:]
            c.send_frame(h2raw.HEADERS, 0, sid, first)
            while rest:
                chunk, rest = rest[:size], rest[size:]
                c.send_frame(h2raw.CONTINUATION,
                             0 if rest else h2raw.END_HEADERS, sid, chunk)
            c.responses.setdefault(sid, h2raw.Response())
            c.send_data(sid, h2raw.grpc_message(b""), end_stream=True)
            r = c.read_response(sid)
            self.assertEqual(r.grpc_status, 8, r.status_fields())
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
        finally:
            c.close()
        # A CONTINUATION flood (CVE-2024-28182): Debian's nghttp2 allows 8
        # per header block and ends the connection past that.
        c = h2raw.H2Conn(self.server.port)
        try:
            sid = c.new_stream_id()
            c.send_frame(h2raw.HEADERS, 0, sid,
                         c.request_headers(h2raw.HEALTH_CHECK))
            for _ in range(1000):
                if not send_quietly(c.sock, h2raw.frame(
                        h2raw.CONTINUATION, 0, sid,
                        h2raw.encode_headers([("x-c", "v" * 10)]))):
                    break
            c.read_until_closed()
            self.assertTrue(c.eof)
            self.assertIsNotNone(c.goaway)
            self.assertNotEqual(c.goaway.error_code(), h2raw.NO_ERROR)
        finally:
            c.close()
        # A single field past what HPACK will decode at all: the connection
        # may be closed with a GOAWAY, but only that one.
        c = h2raw.H2Conn(self.server.port)
        try:
            sid = c.new_stream_id()
            block = c.request_headers(h2raw.HEALTH_CHECK,
                                      [("x-huge", "h" * 100000)])
            c.send_frame(h2raw.HEADERS, 0, sid, block[:16000])
            rest = block[16000:]
            while rest:
                chunk, rest = rest[:16000], rest[16000:]
                c.send_frame(h2raw.CONTINUATION,
                             0 if rest else h2raw.END_HEADERS, sid, chunk)
            c.responses.setdefault(sid, h2raw.Response())
            try:
                c.wait(lambda: c.responses[sid].done or c.goaway)
            except h2raw.Closed:
                pass
            r = c.responses[sid]
            if not c.eof and c.goaway is None and r.rst is None:
                self.assertEqual(r.grpc_status, 8)
        except OSError:
            pass
        finally:
            c.close()
        self.assertHealthy()


class StreamStateTest(HostileCase):

    def setUp(self):
        super().setUp()
        self.start()

    def test_data_on_closed_stream(self):
        c = h2raw.H2Conn(self.server.port)
        try:
            r = c.health_check()  # stream 1, closed both ways
            self.assertEqual(r.grpc_status, 0)
            c.send_data(1, b"late data", end_stream=True)
            # nghttp2 answers a stream or connection error; either way
            # this connection alone is affected.
            try:
                c.wait(lambda: c.goaway is not None or
                       c.responses[1].rst is not None, timeout=3)
            except (TimeoutError, h2raw.Closed):
                pass
            if c.goaway is not None:
                self.assertIn(c.goaway.error_code(),
                              (h2raw.STREAM_CLOSED, h2raw.PROTOCOL_ERROR))
            elif not c.eof:
                self.assertEqual(c.health_check().grpc_status, 0)
        finally:
            c.close()
        # DATA on a stream never opened: a connection error.
        c = h2raw.H2Conn(self.server.port)
        try:
            c.send_data(41, b"who am I", end_stream=True)
            c.read_until_closed()
            self.assertTrue(c.eof)
            self.assertIsNotNone(c.goaway)
            self.assertEqual(c.goaway.error_code(), h2raw.PROTOCOL_ERROR)
        finally:
            c.close()
        self.assertHealthy()

    def test_window_update_zero(self):
        c = h2raw.H2Conn(self.server.port)
        try:
            c.window_update(0, 0)
            c.read_until_closed()
            self.assertTrue(c.eof)
            self.assertEqual(c.goaway.error_code(), h2raw.PROTOCOL_ERROR)
        finally:
            c.close()
        c = h2raw.H2Conn(self.server.port)
        try:
            sid = c.grpc_request("/grpc.health.v1.Health/Watch", b"")
            c.wait(lambda: c.responses[sid].messages())
            c.window_update(sid, 0)
            try:
                c.wait(lambda: c.responses[sid].rst is not None or c.goaway)
            except h2raw.Closed:
                pass
            if c.goaway is not None:
                self.assertEqual(c.goaway.error_code(), h2raw.PROTOCOL_ERROR)
            else:
                self.assertEqual(c.responses[sid].rst, h2raw.PROTOCOL_ERROR)
        finally:
            c.close()
        self.assertHealthy()

    def test_window_update_overflow(self):
        c = h2raw.H2Conn(self.server.port)
        try:
            c.window_update(0, 0x7FFFFFFF)
            c.read_until_closed()
            self.assertTrue(c.eof)
            self.assertEqual(c.goaway.error_code(), h2raw.FLOW_CONTROL_ERROR)
        finally:
            c.close()
        c = h2raw.H2Conn(self.server.port)
        try:
            sid = c.grpc_request("/grpc.health.v1.Health/Watch", b"")
            c.wait(lambda: c.responses[sid].messages())
            c.window_update(sid, 0x7FFFFFFF)
            c.wait(lambda: c.responses[sid].done)
            # A stream error: the connection goes on.
            self.assertEqual(c.responses[sid].rst, h2raw.FLOW_CONTROL_ERROR)
            self.assertEqual(c.health_check().messages(),
                             [h2raw.HEALTH_SERVING])
        finally:
            c.close()
        self.assertHealthy()


class NeverReadsTest(HostileCase):
    """Clients that stop reading: the server must push back, not buffer."""

    def test_streaming_to_a_client_that_never_reads(self):
        server = self.start_interop(env=asan_without_quarantine())
        self.assertHealthy()
        base = rss_kib(server.proc.pid)
        # Huge HTTP/2 windows, so that only TCP and the server's own caps
        # stand between the handler and the socket.
        c = h2raw.H2Conn(server.port, settings=[
            (h2raw.SETTINGS_INITIAL_WINDOW_SIZE, 0x7FFFFFFF)])
        c.window_update(0, 0x7FFFFFFF - 65535)
        req = messages_pb2.StreamingOutputCallRequest(response_parameters=[
            messages_pb2.ResponseParameters(size=256 * 1024)
            for _ in range(200)])  # 50 MiB
        c.grpc_request(STREAMING_OUTPUT, req.SerializeToString())
        # The server fills the socket buffers, then stops.
        wait_until(lambda: server_send_queue(server.port) > 1 << 20,
                   what="server-side socket buffer to fill")
        # Give it the time it would need to buffer the rest if it did.
        time.sleep(1.5)
        peak = max(rss_kib(server.proc.pid) for _ in range(5))
        growth_mb = (peak - base) / 1024
        self.assertLess(growth_mb, 30, f"RSS grew {growth_mb:.1f} MB")
        # Other clients are served meanwhile.
        self.assertHealthy()
        # SIGTERM with the stalled call still open: the drain times out
        # (5 s in the interop server), the call is cancelled, and the
        # connection that cannot take even a GOAWAY is closed: exit 0.
        server.signal(signal.SIGTERM)
        code = server.proc.wait(timeout=30)
        self.assertEqual(code, 0, server.log()[-3000:])
        server.kill()  # only closes its log now
        c.close()

    def test_stalled_connection_freed_by_idle_timer(self):
        # One connection allowed. A client asks for far more than the
        # socket buffers hold (reflection answers on 60 streams, ~15 MB)
        # without reading any of it, so the server's writes stall; then it
        # resets every stream and sits on the socket. The idle timer's
        # GOAWAY cannot be written; a second idle period later the server
        # must give up on the connection and free its slot.
        self.start("--max-connections", "1", "--idle-timeout", "500")
        wait_until(lambda: established(self.server.port) == 0,
                   what="the health probe's connection to close")
        c = h2raw.H2Conn(self.server.port, settings=[
            (h2raw.SETTINGS_INITIAL_WINDOW_SIZE, 0x7FFFFFFF)])
        try:
            c.window_update(0, 0x7FFFFFFF - 65535)
            req = h2raw.grpc_message(reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"
            ).SerializeToString())
            sids = []
            for _ in range(60):
                sid = c.new_stream_id()
                c.send_headers(sid, c.request_headers(REFLECTION))
                c.send_data(sid, req * 140)  # ~250 KB of answers each
                sids.append(sid)
            # Stalled: the kernel's send queue is large and stops moving.
            last = [-1, 0]

            def plateau():
                q = server_send_queue(self.server.port)
                last[1] = last[1] + 1 if q == last[0] else 0
                last[0] = q
                return q > 1 << 20 and last[1] >= 10
            wait_until(plateau, what="the server's writes to stall")
            for sid in sids:
                c.rst_stream(sid)

            def second_connection_served():
                try:
                    d = h2raw.H2Conn(self.server.port, timeout=2)
                except (h2raw.Closed, OSError, TimeoutError):
                    return False
                try:
                    return d.health_check().messages() == [
                        h2raw.HEALTH_SERVING]
                except (h2raw.Closed, OSError, TimeoutError):
                    return False
                finally:
                    d.close()
            wait_until(second_connection_served, timeout=20,
                       what="the stalled connection to be dropped")
        finally:
            c.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
