"""The gRPC interop client test cases, with Debian's python3-grpcio, against
vkey-interop-server.

Each test_<case> method follows the case of the same name in grpc/grpc
doc/interop-test-descriptions.md and asserts what it says. grpcio cannot see
a message's compressed flag nor compress single messages of a stream, so the
compression cases also use a tiny HTTP/2 client (RawGrpc below) for the
assertions grpcio cannot make. A few test_extra_* methods then exercise what
the interop cases leave out: interval_us, HalfDuplexCall, back-pressure,
cancelling during an interval, and reflection/health on this server.
"""

import os
import queue
import socket
import struct
import subprocess
import threading
import time
import unittest
import zlib

import grpc

import vkharness  # grafts the generated stubs onto grpc's package path

from grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc.reflection.v1alpha import (  # noqa: E402
    reflection_pb2, reflection_pb2_grpc)
from grpc.testing import empty_pb2, messages_pb2, test_pb2_grpc  # noqa: E402

COMPRESSABLE = messages_pb2.COMPRESSABLE
INITIAL_MD_KEY = "x-grpc-test-echo-initial"
TRAILING_MD_KEY = "x-grpc-test-echo-trailing-bin"
TIMEOUT = 30  # seconds for any one RPC that should succeed


def zeros(n):
    return b"\x00" * n


def payload(n):
    return messages_pb2.Payload(type=COMPRESSABLE, body=zeros(n))


def bool_value(v):
    return messages_pb2.BoolValue(value=v)


class Pipe:
    """A request iterator fed by the test, for bidi and client streaming."""

    _CLOSE = object()

    def __init__(self):
        self._q = queue.Queue()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._q.get()
        if item is self._CLOSE:
            raise StopIteration()
        return item

    def add(self, request):
        self._q.put(request)

    def close(self):
        self._q.put(self._CLOSE)


# --- a minimal HTTP/2 gRPC client ---------------------------------------------

class RawGrpc:
    """One gRPC call over h2c with prior knowledge, byte by byte.

    It exists for what grpcio hides: the compressed flag of each response
    message, and sending one message of a stream compressed and the next
    not. It sends small request bodies only (under the 64 KiB initial flow
    control window) and does not decode HPACK, so it does not read the
    grpc-status trailer; the grpcio half of each test checks statuses.
    """

    DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = (
        0, 1, 3, 4, 6, 7, 8)
    END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
    WINDOW = 1 << 24

    def __init__(self, port):
        self.port = port

    @staticmethod
    def frame(ftype, flags, stream, data=b""):
        return (struct.pack(">I", len(data))[1:]
                + struct.pack(">BBI", ftype, flags, stream) + data)

    @staticmethod
    def _hpack_int(value, prefix_bits, first=0):
        limit = (1 << prefix_bits) - 1
        if value < limit:
            return bytes([first | value])
        out = [first | limit]
        value -= limit
        while value >= 128:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
        return bytes(out)

    @classmethod
    def _hpack_literal(cls, name, value):
        # Literal header field without indexing, new name, no Huffman.
        name, value = name.encode(), value.encode()
        return (b"\x00" + cls._hpack_int(len(name), 7) + name
                + cls._hpack_int(len(value), 7) + value)

    @staticmethod
    def message(body, compressed=False):
        """A length-prefixed gRPC message; `compressed` gzips it."""
        if compressed:
            c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
            body = c.compress(body) + c.flush()
        return struct.pack(">BI", 1 if compressed else 0, len(body)) + body

    def call(self, method, body, encoding=None, timeout=TIMEOUT):
        """Sends `body` (gRPC messages) to /grpc.testing.TestService/method
        and half-closes. Returns [(compressed_flag, decoded_bytes)] of the
        response messages once the server ends the stream; fails on
        RST_STREAM, GOAWAY or a timeout."""
        assert len(body) < 65535, "RawGrpc sends small bodies only"
        headers = [
            (":method", "POST"), (":scheme", "http"),
            (":path", f"/grpc.testing.TestService/{method}"),
            (":authority", f"127.0.0.1:{self.port}"),
            ("content-type", "application/grpc"), ("te", "trailers"),
            ("grpc-accept-encoding", "gzip"),
        ]
        if encoding:
            headers.append(("grpc-encoding", encoding))
        block = b"".join(self._hpack_literal(n, v) for n, v in headers)
        out = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
               self.frame(self.SETTINGS, 0, 0,
                          struct.pack(">HI", 0x4, self.WINDOW)),
               self.frame(self.WINDOW_UPDATE, 0, 0,
                          struct.pack(">I", self.WINDOW - 65535)),
               self.frame(self.HEADERS, self.END_HEADERS, 1, block)]
        chunks = [body[i:i + 16384] for i in range(0, len(body), 16384)]
        chunks = chunks or [b""]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            out.append(self.frame(self.DATA, self.END_STREAM if last else 0,
                                  1, chunk))
        data = bytearray()
        with socket.create_connection(("127.0.0.1", self.port),
                                      timeout=timeout) as sock:
            sock.sendall(b"".join(out))
            buf = b""
            deadline = time.monotonic() + timeout
            while True:
                while len(buf) < 9 or len(buf) < 9 + int.from_bytes(
                        buf[:3], "big"):
                    if time.monotonic() > deadline:
                        raise AssertionError("RawGrpc: timed out")
                    more = sock.recv(65536)
                    if not more:
                        raise AssertionError("RawGrpc: connection closed")
                    buf += more
                length = int.from_bytes(buf[:3], "big")
                ftype, flags, stream = struct.unpack(">BBI", buf[3:9])
                stream &= 0x7FFFFFFF
                fdata, buf = buf[9:9 + length], buf[9 + length:]
                if ftype == self.SETTINGS and not flags & self.ACK:
                    sock.sendall(self.frame(self.SETTINGS, self.ACK, 0))
                elif ftype == self.PING and not flags & self.ACK:
                    sock.sendall(self.frame(self.PING, self.ACK, 0, fdata))
                elif ftype == self.GOAWAY:
                    raise AssertionError(f"RawGrpc: GOAWAY {fdata.hex()}")
                elif stream == 1 and ftype == self.RST_STREAM:
                    raise AssertionError(f"RawGrpc: RST_STREAM {fdata.hex()}")
                elif stream == 1 and ftype == self.DATA:
                    if flags & 0x8:  # PADDED
                        fdata = fdata[1:len(fdata) - fdata[0]]
                    data += fdata
                if (stream == 1 and ftype in (self.DATA, self.HEADERS)
                        and flags & self.END_STREAM):
                    break
        messages = []
        while data:
            flag, n = struct.unpack(">BI", data[:5])
            msg = bytes(data[5:5 + n])
            assert len(msg) == n, "RawGrpc: truncated message"
            del data[:5 + n]
            if flag == 1:
                msg = zlib.decompress(msg, 16 + zlib.MAX_WBITS)  # gzip
            messages.append((flag, msg))
        return messages


# --- the test cases -----------------------------------------------------------

class InteropTest(vkharness.ServerTestCase):

    def setUp(self):
        super().setUp()
        self.server = self.start_interop()
        self.channel = grpc.insecure_channel(self.server.target)
        grpc.channel_ready_future(self.channel).result(timeout=TIMEOUT)
        self.stub = test_pb2_grpc.TestServiceStub(self.channel)

    def tearDown(self):
        self.channel.close()
        super().tearDown()

    def assertZeros(self, body, size):
        self.assertEqual(len(body), size)
        self.assertEqual(body, zeros(size))

    def assertRpcError(self, ctx, code, details=None):
        err = ctx.exception
        self.assertEqual(err.code(), code, err.details())
        if details is not None:
            self.assertEqual(err.details(), details)

    def large_request(self, **kw):
        return messages_pb2.SimpleRequest(
            response_type=COMPRESSABLE, response_size=314159,
            payload=payload(271828), **kw)

    # empty_unary
    def test_empty_unary(self):
        resp = self.stub.EmptyCall(empty_pb2.Empty(), timeout=TIMEOUT)
        self.assertIsInstance(resp, empty_pb2.Empty)
        self.assertEqual(resp.ByteSize(), 0)

    # large_unary
    def test_large_unary(self):
        resp = self.stub.UnaryCall(self.large_request(), timeout=TIMEOUT)
        self.assertEqual(resp.payload.type, COMPRESSABLE)
        self.assertZeros(resp.payload.body, 314159)

    # client_compressed_unary
    def test_client_compressed_unary(self):
        # 1. The feature probe: an uncompressed message that expects to
        # have been compressed fails.
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.UnaryCall(
                self.large_request(expect_compressed=bool_value(True)),
                timeout=TIMEOUT)
        self.assertRpcError(ctx, grpc.StatusCode.INVALID_ARGUMENT)
        # 2. The same, compressed: succeeds.
        resp = self.stub.UnaryCall(
            self.large_request(expect_compressed=bool_value(True)),
            compression=grpc.Compression.Gzip, timeout=TIMEOUT)
        self.assertZeros(resp.payload.body, 314159)
        # 3. Uncompressed, expecting no compression: succeeds.
        resp = self.stub.UnaryCall(
            self.large_request(expect_compressed=bool_value(False)),
            timeout=TIMEOUT)
        self.assertZeros(resp.payload.body, 314159)

    # server_compressed_unary
    def test_server_compressed_unary(self):
        for compressed in (True, False):
            with self.subTest(response_compressed=compressed):
                req = self.large_request(
                    response_compressed=bool_value(compressed))
                resp = self.stub.UnaryCall(req, timeout=TIMEOUT)
                self.assertZeros(resp.payload.body, 314159)
                # grpcio hides the flag: check it on the wire.
                raw = RawGrpc(self.server.port).call(
                    "UnaryCall",
                    RawGrpc.message(req.SerializeToString(), compressed=True),
                    encoding="gzip")
                self.assertEqual(len(raw), 1)
                flag, body = raw[0]
                self.assertEqual(flag, 1 if compressed else 0)
                resp = messages_pb2.SimpleResponse.FromString(body)
                self.assertZeros(resp.payload.body, 314159)

    # client_streaming
    def test_client_streaming(self):
        reqs = [messages_pb2.StreamingInputCallRequest(payload=payload(n))
                for n in (27182, 8, 1828, 45904)]
        resp = self.stub.StreamingInputCall(iter(reqs), timeout=TIMEOUT)
        self.assertEqual(resp.aggregated_payload_size, 74922)

    # client_compressed_streaming
    def test_client_compressed_streaming(self):
        first = messages_pb2.StreamingInputCallRequest(
            payload=payload(27182), expect_compressed=bool_value(True))
        second = messages_pb2.StreamingInputCallRequest(
            payload=payload(45904), expect_compressed=bool_value(False))
        # 1. The probe, uncompressed: fails with INVALID_ARGUMENT.
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.StreamingInputCall(iter([first]), timeout=TIMEOUT)
        self.assertRpcError(ctx, grpc.StatusCode.INVALID_ARGUMENT)
        # 2.+3. First message compressed, second not, then half-close.
        # grpcio compresses a whole call or nothing, so the exact procedure
        # goes over RawGrpc; the server sends its response only on success.
        raw = RawGrpc(self.server.port).call(
            "StreamingInputCall",
            RawGrpc.message(first.SerializeToString(), compressed=True)
            + RawGrpc.message(second.SerializeToString(), compressed=False),
            encoding="gzip")
        self.assertEqual(len(raw), 1)
        resp = messages_pb2.StreamingInputCallResponse.FromString(raw[0][1])
        self.assertEqual(resp.aggregated_payload_size, 73086)
        # ... and grpcio with both messages compressed, which checks the
        # status too.
        resp = self.stub.StreamingInputCall(
            iter([first, second]), compression=grpc.Compression.Gzip,
            timeout=TIMEOUT)
        self.assertEqual(resp.aggregated_payload_size, 73086)

    # server_streaming
    def test_server_streaming(self):
        sizes = (31415, 9, 2653, 58979)
        req = messages_pb2.StreamingOutputCallRequest(
            response_type=COMPRESSABLE,
            response_parameters=[messages_pb2.ResponseParameters(size=n)
                                 for n in sizes])
        it = self.stub.StreamingOutputCall(req, timeout=TIMEOUT)
        resps = list(it)
        self.assertEqual(it.code(), grpc.StatusCode.OK)
        self.assertEqual(len(resps), 4)
        for resp, n in zip(resps, sizes):
            self.assertEqual(resp.payload.type, COMPRESSABLE)
            self.assertZeros(resp.payload.body, n)

    # server_compressed_streaming
    def test_server_compressed_streaming(self):
        req = messages_pb2.StreamingOutputCallRequest(
            response_parameters=[
                messages_pb2.ResponseParameters(
                    compressed=bool_value(True), size=31415),
                messages_pb2.ResponseParameters(
                    compressed=bool_value(False), size=92653)])
        it = self.stub.StreamingOutputCall(req, timeout=TIMEOUT)
        resps = list(it)
        self.assertEqual(it.code(), grpc.StatusCode.OK)
        self.assertEqual([len(r.payload.body) for r in resps], [31415, 92653])
        # The flags, on the wire.
        raw = RawGrpc(self.server.port).call(
            "StreamingOutputCall", RawGrpc.message(req.SerializeToString()))
        self.assertEqual([flag for flag, _ in raw], [1, 0])
        sizes = [len(messages_pb2.StreamingOutputCallResponse.FromString(
            body).payload.body) for _, body in raw]
        self.assertEqual(sizes, [31415, 92653])

    # ping_pong
    def test_ping_pong(self):
        pipe = Pipe()
        it = self.stub.FullDuplexCall(pipe, timeout=TIMEOUT)
        for req_size, resp_size in ((27182, 31415), (8, 9), (1828, 2653),
                                    (45904, 58979)):
            pipe.add(messages_pb2.StreamingOutputCallRequest(
                response_type=COMPRESSABLE,
                response_parameters=[
                    messages_pb2.ResponseParameters(size=resp_size)],
                payload=payload(req_size)))
            resp = next(it)
            self.assertEqual(resp.payload.type, COMPRESSABLE)
            self.assertZeros(resp.payload.body, resp_size)
        pipe.close()
        self.assertEqual(list(it), [])  # exactly four responses
        self.assertEqual(it.code(), grpc.StatusCode.OK)

    # empty_stream
    def test_empty_stream(self):
        it = self.stub.FullDuplexCall(iter([]), timeout=TIMEOUT)
        self.assertEqual(list(it), [])
        self.assertEqual(it.code(), grpc.StatusCode.OK)

    # cancel_after_begin
    def test_cancel_after_begin(self):
        pipe = Pipe()
        fut = self.stub.StreamingInputCall.future(pipe, timeout=TIMEOUT)
        fut.cancel()
        self.assertTrue(fut.cancelled())
        self.assertEqual(fut.code(), grpc.StatusCode.CANCELLED)
        pipe.close()

    # cancel_after_first_response
    def test_cancel_after_first_response(self):
        pipe = Pipe()
        it = self.stub.FullDuplexCall(pipe, timeout=TIMEOUT)
        pipe.add(messages_pb2.StreamingOutputCallRequest(
            response_type=COMPRESSABLE,
            response_parameters=[messages_pb2.ResponseParameters(size=31415)],
            payload=payload(27182)))
        next(it)
        it.cancel()
        with self.assertRaises(grpc.RpcError) as ctx:
            next(it)
        self.assertRpcError(ctx, grpc.StatusCode.CANCELLED)
        pipe.close()

    # timeout_on_sleeping_server
    def test_timeout_on_sleeping_server(self):
        pipe = Pipe()
        it = self.stub.FullDuplexCall(pipe, timeout=0.001)
        pipe.add(messages_pb2.StreamingOutputCallRequest(
            payload=payload(27182)))
        with self.assertRaises(grpc.RpcError) as ctx:
            next(it)
        self.assertRpcError(ctx, grpc.StatusCode.DEADLINE_EXCEEDED)
        pipe.close()

    # status_code_and_message
    def test_status_code_and_message(self):
        status = messages_pb2.EchoStatus(code=2,
                                         message="test status message")
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.UnaryCall(
                messages_pb2.SimpleRequest(response_status=status),
                timeout=TIMEOUT)
        self.assertRpcError(ctx, grpc.StatusCode.UNKNOWN,
                            "test status message")
        it = self.stub.FullDuplexCall(
            iter([messages_pb2.StreamingOutputCallRequest(
                response_status=status)]), timeout=TIMEOUT)
        with self.assertRaises(grpc.RpcError) as ctx:
            list(it)
        self.assertRpcError(ctx, grpc.StatusCode.UNKNOWN,
                            "test status message")

    # special_status_message
    def test_special_status_message(self):
        message = ("\t\ntest with whitespace\r\nand Unicode BMP \u263a "
                   "and non-BMP \U0001f608\t\n")
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.UnaryCall(
                messages_pb2.SimpleRequest(
                    response_status=messages_pb2.EchoStatus(
                        code=2, message=message)),
                timeout=TIMEOUT)
        self.assertRpcError(ctx, grpc.StatusCode.UNKNOWN, message)

    # custom_metadata
    def test_custom_metadata(self):
        metadata = ((INITIAL_MD_KEY, "test_initial_metadata_value"),
                    (TRAILING_MD_KEY, b"\xab\xab\xab"))

        def check(call):
            self.assertIn((INITIAL_MD_KEY, "test_initial_metadata_value"),
                          list(call.initial_metadata()))
            self.assertIn((TRAILING_MD_KEY, b"\xab\xab\xab"),
                          list(call.trailing_metadata()))

        resp, call = self.stub.UnaryCall.with_call(
            self.large_request(), metadata=metadata, timeout=TIMEOUT)
        self.assertZeros(resp.payload.body, 314159)
        check(call)

        it = self.stub.FullDuplexCall(
            iter([messages_pb2.StreamingOutputCallRequest(
                response_parameters=[
                    messages_pb2.ResponseParameters(size=314159)],
                payload=payload(271828))]),
            metadata=metadata, timeout=TIMEOUT)
        resps = list(it)
        self.assertEqual(it.code(), grpc.StatusCode.OK)
        self.assertEqual([len(r.payload.body) for r in resps], [314159])
        check(it)

    # unimplemented_method
    def test_unimplemented_method(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.UnimplementedCall(empty_pb2.Empty(), timeout=TIMEOUT)
        self.assertRpcError(ctx, grpc.StatusCode.UNIMPLEMENTED)

    # unimplemented_service
    def test_unimplemented_service(self):
        stub = test_pb2_grpc.UnimplementedServiceStub(self.channel)
        with self.assertRaises(grpc.RpcError) as ctx:
            stub.UnimplementedCall(empty_pb2.Empty(), timeout=TIMEOUT)
        self.assertRpcError(ctx, grpc.StatusCode.UNIMPLEMENTED)

    # --- beyond the interop cases ---------------------------------------------

    def test_extra_interval_us(self):
        # Observe ResponseParameters.interval_us: the intervals add up.
        req = messages_pb2.StreamingOutputCallRequest(
            response_parameters=[messages_pb2.ResponseParameters(
                size=10, interval_us=100_000) for _ in range(3)])
        start = time.monotonic()
        resps = list(self.stub.StreamingOutputCall(req, timeout=TIMEOUT))
        self.assertEqual(len(resps), 3)
        self.assertGreaterEqual(time.monotonic() - start, 0.29)

    def test_extra_half_duplex(self):
        # HalfDuplexCall answers nothing before the client half-closes.
        pipe = Pipe()
        it = self.stub.HalfDuplexCall(pipe, timeout=TIMEOUT)
        for n in (1, 2, 3):
            pipe.add(messages_pb2.StreamingOutputCallRequest(
                response_parameters=[messages_pb2.ResponseParameters(size=n)]))
        got = []
        reader = threading.Thread(target=lambda: got.extend(it))
        reader.start()
        time.sleep(0.3)
        self.assertEqual(got, [])
        pipe.close()
        reader.join(TIMEOUT)
        self.assertEqual([len(r.payload.body) for r in got], [1, 2, 3])
        self.assertEqual(it.code(), grpc.StatusCode.OK)

    def test_extra_half_duplex_bound(self):
        # HalfDuplexCall's buffer is capped: more pending responses than
        # VK_TEST_SERVICE_MAX_PENDING (1024) end the call at once, while
        # the client is still sending.
        pipe = Pipe()
        it = self.stub.HalfDuplexCall(pipe, timeout=TIMEOUT)
        pipe.add(messages_pb2.StreamingOutputCallRequest(
            response_parameters=[messages_pb2.ResponseParameters(size=0)]
            * 1025))
        with self.assertRaises(grpc.RpcError) as ctx:
            next(it)
        self.assertRpcError(ctx, grpc.StatusCode.RESOURCE_EXHAUSTED)
        pipe.close()

    def test_extra_backpressure(self):
        # 64 MiB of responses to a client that reads slowly at first: the
        # server has to stop at its send-queue cap and resume on_writable.
        req = messages_pb2.StreamingOutputCallRequest(
            response_parameters=[messages_pb2.ResponseParameters(
                size=1 << 20) for _ in range(64)])
        it = self.stub.StreamingOutputCall(req, timeout=60)
        first = next(it)
        time.sleep(1.0)
        rest = list(it)
        self.assertEqual(it.code(), grpc.StatusCode.OK)
        self.assertEqual(len(rest) + 1, 64)
        self.assertTrue(all(len(r.payload.body) == 1 << 20
                            for r in [first] + rest))

    def test_extra_cancel_while_waiting(self):
        # Cancelled while its interval timer runs; the timer must be closed
        # and the call released (the shutdown check catches a leak), and
        # the server must go on serving.
        req = messages_pb2.StreamingOutputCallRequest(
            response_parameters=[messages_pb2.ResponseParameters(
                size=10, interval_us=10_000_000)])
        for _ in range(3):
            it = self.stub.StreamingOutputCall(req, timeout=TIMEOUT)
            time.sleep(0.2)
            it.cancel()
        with self.assertRaises(grpc.RpcError) as ctx:
            list(self.stub.StreamingOutputCall(req, timeout=0.3))
        self.assertRpcError(ctx, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertIsInstance(
            self.stub.EmptyCall(empty_pb2.Empty(), timeout=TIMEOUT),
            empty_pb2.Empty)

    def test_extra_drain_with_call_in_flight(self):
        # SIGTERM while a stream waits on its timer: the server drains,
        # cancels the call after its drain timeout and exits 0, leak-free
        # (checked by tearDown).
        req = messages_pb2.StreamingOutputCallRequest(
            response_parameters=[messages_pb2.ResponseParameters(
                size=10, interval_us=60_000_000)])
        it = self.stub.StreamingOutputCall(req, timeout=TIMEOUT)
        time.sleep(0.3)
        start = time.monotonic()
        self.assertEqual(self.server.stop(), 0, self.server.log()[-4000:])
        self.assertLess(time.monotonic() - start, 15)
        with self.assertRaises(grpc.RpcError):
            list(it)

    def test_extra_tls(self):
        # large_unary over TLS (ALPN h2) with a throwaway self-signed cert.
        cert = os.path.join(self.workdir, "cert.pem")
        key = os.path.join(self.workdir, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-addext",
             "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
            check=True, capture_output=True)
        server = self.start_interop("--tls-cert", cert, "--tls-key", key,
                                    name="interop-tls")
        with open(cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        with grpc.secure_channel(
                server.target, creds,
                options=[("grpc.ssl_target_name_override", "localhost")]
        ) as channel:
            stub = test_pb2_grpc.TestServiceStub(channel)
            resp = stub.UnaryCall(self.large_request(), timeout=TIMEOUT)
            self.assertZeros(resp.payload.body, 314159)

    def test_extra_health_and_reflection(self):
        health = health_pb2_grpc.HealthStub(self.channel)
        resp = health.Check(health_pb2.HealthCheckRequest(service=""),
                            timeout=TIMEOUT)
        self.assertEqual(resp.status,
                         health_pb2.HealthCheckResponse.SERVING)
        refl = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        resps = list(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(
                list_services="")]), timeout=TIMEOUT))
        names = [s.name for s in resps[0].list_services_response.service]
        self.assertIn("grpc.testing.TestService", names)


if __name__ == "__main__":
    unittest.main(verbosity=2)
