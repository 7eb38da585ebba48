"""grpc.health.v1.Health and server reflection (v1 and v1alpha), end to end.

Real binaries, a real redis-server and the grpcio client: health follows
Redis going away and coming back, and a client that knows no .proto file
learns the health service through reflection and calls it.
"""

import os
import queue
import threading
import time
import unittest

import grpc

import vkharness

# The generated stubs live in a "grpc" package, like grpcio itself: let the
# grpcio package also find grpc.health and grpc.reflection in the build tree.
for _entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    _gen = os.path.join(_entry, "grpc")
    if os.path.isdir(os.path.join(_gen, "health")) and _gen not in grpc.__path__:
        grpc.__path__.append(_gen)

from google.protobuf import descriptor_pb2  # noqa: E402
from google.protobuf import descriptor_pool  # noqa: E402
from google.protobuf import message_factory  # noqa: E402
from grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc.reflection.v1 import reflection_pb2 as refl_v1  # noqa: E402
from grpc.reflection.v1 import reflection_pb2_grpc as refl_v1_grpc  # noqa: E402
from grpc.reflection.v1alpha import reflection_pb2 as refl_v1a  # noqa: E402
from grpc.reflection.v1alpha import (  # noqa: E402
    reflection_pb2_grpc as refl_v1a_grpc)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RPC_TIMEOUT = 10.0
# vkeyd reconnects to Redis with back-off; allow a few of its rounds.
STATUS_TIMEOUT = 45.0

# (name, messages module, stub module) for both reflection versions.
REFLECTION_VERSIONS = (
    ("v1", refl_v1, refl_v1_grpc),
    ("v1alpha", refl_v1a, refl_v1a_grpc),
)
REFLECTION_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


class ReflectionStream:
    """One ServerReflectionInfo stream, driven one request at a time."""

    def __init__(self, channel, pb, pb_grpc):
        self.pb = pb
        self._requests = queue.Queue()
        stub = pb_grpc.ServerReflectionStub(channel)
        self.call = stub.ServerReflectionInfo(
            iter(self._requests.get, None), timeout=60)

    def ask(self, **fields):
        req = self.pb.ServerReflectionRequest(host="vkey-test", **fields)
        self._requests.put(req)
        resp = next(self.call)
        return req, resp

    def close(self):
        """Half-closes and returns what else the server sent."""
        self._requests.put(None)
        return list(self.call)


def build_pool(file_protos):
    """A descriptor pool from serialized FileDescriptorProtos, in any order."""
    pending = {}
    for raw in file_protos:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        pending[fd.name] = fd
    pool = descriptor_pool.DescriptorPool()
    added = set()
    while pending:
        ready = [n for n, fd in pending.items()
                 if all(d in added for d in fd.dependency)]
        if not ready:
            raise AssertionError(f"unresolvable imports: {sorted(pending)}")
        for name in ready:
            pool.Add(pending.pop(name))
            added.add(name)
    return pool


def message_class(pool, full_name):
    desc = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


class Watcher:
    """Collects a Health/Watch stream's statuses on a thread."""

    def __init__(self, stub, service=""):
        self.statuses = queue.Queue()
        self.call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self.error = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for resp in self.call:
                self.statuses.put(resp.status)
        except grpc.RpcError as e:
            self.error = e
        self.statuses.put(None)

    def next(self, timeout=STATUS_TIMEOUT):
        return self.statuses.get(timeout=timeout)

    def wait_for(self, status, timeout=STATUS_TIMEOUT):
        """Waits for `status`; returns the statuses seen before it."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no status {status} after {seen}")
            got = self.statuses.get(timeout=left)
            if got is None:
                raise AssertionError(f"watch ended: {self.error}")
            if got == status:
                return seen
            seen.append(got)

    def cancel(self):
        self.call.cancel()
        self._thread.join(timeout=10)


class HealthReflectionTest(vkharness.ServerTestCase):

    def setUp(self):
        super().setUp()
        self.redis, url = self.start_redis()
        self.vkeyd = self.start_vkeyd(redis_url=url)
        self.channel = grpc.insecure_channel(self.vkeyd.target)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def tearDown(self):
        self.channel.close()
        super().tearDown()

    def check(self, service=""):
        return self.health.Check(
            health_pb2.HealthCheckRequest(service=service),
            timeout=RPC_TIMEOUT).status

    def wait_check(self, status, service=""):
        deadline = time.monotonic() + STATUS_TIMEOUT
        while True:
            got = self.check(service)
            if got == status or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def stop_redis(self):
        self.redis.stop()
        # The harness rereads every log at tearDown, and stop() closed this
        # one; redis-server is not sanitized, so nothing is lost.
        self._procs.remove(self.redis)

    def restart_redis(self):
        """redis-server again on the port vkeyd was given."""
        port = self.redis.port
        data = os.path.join(self.workdir, "redis")
        self.redis = self.spawn(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--dir", data, "--appendonly", "yes", "--save", ""], "redis")
        vkharness.wait_for_port(port, self.redis.proc)
        self.redis.port = port

    # --- health ---------------------------------------------------------

    def test_check(self):
        self.assertEqual(self.wait_check(SERVING), SERVING)
        with self.assertRaises(grpc.RpcError) as cm:
            self.check("no.such.Service")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_watch_follows_redis(self):
        self.assertEqual(self.wait_check(SERVING), SERVING)
        watch = Watcher(self.health)
        unknown = Watcher(self.health, "no.such.Service")
        try:
            self.assertEqual(watch.next(), SERVING)
            self.assertEqual(unknown.next(),
                             health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)

            self.stop_redis()
            self.assertEqual(watch.wait_for(NOT_SERVING), [])
            self.assertEqual(self.check(), NOT_SERVING)

            self.restart_redis()
            # Only changes are sent, so nothing but NOT_SERVING -> SERVING.
            self.assertEqual(watch.wait_for(SERVING), [])
            self.assertEqual(self.check(), SERVING)

            # The unknown service's stream stayed open and silent.
            self.assertTrue(unknown.statuses.empty())
            self.assertIsNone(unknown.error)
        finally:
            watch.cancel()
            unknown.cancel()
        self.assertEqual(watch.error.code(), grpc.StatusCode.CANCELLED)

    def test_many_idle_watches_then_cancel(self):
        self.assertEqual(self.wait_check(SERVING), SERVING)
        watches = [Watcher(self.health) for _ in range(50)]
        for w in watches:
            self.assertEqual(w.next(), SERVING)
        for w in watches[::2]:
            w.cancel()
        self.stop_redis()
        for w in watches[1::2]:
            self.assertEqual(w.wait_for(NOT_SERVING), [])
        for w in watches[1::2]:
            w.cancel()
        # vkeyd still answers, and its shutdown (tearDown) is clean.
        self.assertEqual(self.check(), NOT_SERVING)

    # --- reflection -----------------------------------------------------

    def test_reflection(self):
        for version, pb, pb_grpc in REFLECTION_VERSIONS:
            with self.subTest(version=version):
                self._check_reflection(pb, pb_grpc)

    def _check_reflection(self, pb, pb_grpc):
        s = ReflectionStream(self.channel, pb, pb_grpc)

        req, resp = s.ask(list_services="")
        self.assertEqual(resp.original_request, req)
        self.assertEqual(resp.valid_host, "vkey-test")
        names = {svc.name for svc in resp.list_services_response.service}
        for name in REFLECTION_SERVICES:
            self.assertIn(name, names)

        req, resp = s.ask(file_containing_symbol="grpc.health.v1.Health")
        self.assertEqual(resp.original_request, req)
        self.assertEqual(resp.WhichOneof("message_response"),
                         "file_descriptor_response")
        protos = resp.file_descriptor_response.file_descriptor_proto
        fd = descriptor_pb2.FileDescriptorProto.FromString(protos[0])
        self.assertEqual(fd.name, "grpc/health/v1/health.proto")
        self.assertEqual(fd.package, "grpc.health.v1")
        self.assertEqual([svc.name for svc in fd.service], ["Health"])

        for symbol in ("grpc.health.v1.Health.Watch",
                       "grpc.health.v1.HealthCheckResponse.ServingStatus",
                       "grpc.reflection.v1alpha.ServerReflectionRequest"):
            _, resp = s.ask(file_containing_symbol=symbol)
            self.assertEqual(resp.WhichOneof("message_response"),
                             "file_descriptor_response", symbol)

        _, resp = s.ask(file_by_filename="grpc/reflection/v1/reflection.proto")
        fd = descriptor_pb2.FileDescriptorProto.FromString(
            resp.file_descriptor_response.file_descriptor_proto[0])
        self.assertEqual(fd.package, "grpc.reflection.v1")

        for fields in ({"file_by_filename": "no/such.proto"},
                       {"file_containing_symbol": "no.such.Symbol"},
                       {"all_extension_numbers_of_type": "no.such.Type"},
                       {"file_containing_extension": pb.ExtensionRequest(
                           containing_type="grpc.health.v1.HealthCheckRequest",
                           extension_number=1000)}):
            req, resp = s.ask(**fields)
            self.assertEqual(resp.original_request, req)
            self.assertEqual(resp.error_response.error_code,
                             grpc.StatusCode.NOT_FOUND.value[0], fields)
            self.assertTrue(resp.error_response.error_message)

        _, resp = s.ask(
            all_extension_numbers_of_type="grpc.health.v1.HealthCheckRequest")
        numbers = resp.all_extension_numbers_response
        self.assertEqual(numbers.base_type_name,
                         "grpc.health.v1.HealthCheckRequest")
        self.assertEqual(list(numbers.extension_number), [])

        # Over the name cap: an error for this request, the stream goes on.
        req, resp = s.ask(file_containing_symbol="x" * 5000)
        self.assertEqual(resp.error_response.error_code,
                         grpc.StatusCode.INVALID_ARGUMENT.value[0])
        self.assertEqual(resp.original_request, req)
        _, resp = s.ask(file_containing_symbol="grpc.health.v1.Health")
        self.assertEqual(resp.WhichOneof("message_response"),
                         "file_descriptor_response")

        # No request set at all.
        _, resp = s.ask()
        self.assertEqual(resp.error_response.error_code,
                         grpc.StatusCode.INVALID_ARGUMENT.value[0])

        self.assertEqual(s.close(), [])
        self.assertEqual(s.call.code(), grpc.StatusCode.OK)

    def test_pipelined_reflection(self):
        """Many requests in flight at once: each is answered, in order."""
        stub = refl_v1_grpc.ServerReflectionStub(self.channel)
        reqs = []
        for i in range(200):
            if i % 3 == 0:
                reqs.append(refl_v1.ServerReflectionRequest(
                    file_containing_symbol="grpc.health.v1.Health"))
            elif i % 3 == 1:
                reqs.append(refl_v1.ServerReflectionRequest(list_services=""))
            else:
                reqs.append(refl_v1.ServerReflectionRequest(
                    file_by_filename=f"missing/{i}.proto"))
        resps = list(stub.ServerReflectionInfo(iter(reqs), timeout=60))
        self.assertEqual([r.original_request for r in resps], reqs)

    def test_dynamic_health_call(self):
        """A client with no .proto learns Health by reflection and calls it."""
        self.assertEqual(self.wait_check(SERVING), SERVING)
        s = ReflectionStream(self.channel, refl_v1, refl_v1_grpc)
        _, resp = s.ask(file_containing_symbol="grpc.health.v1.Health")
        s.close()
        pool = build_pool(resp.file_descriptor_response.file_descriptor_proto)

        service = pool.FindServiceByName("grpc.health.v1.Health")
        method = service.methods_by_name["Check"]
        request_cls = message_class(pool, method.input_type.full_name)
        response_cls = message_class(pool, method.output_type.full_name)
        check = self.channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString)
        reply = check(request_cls(service=""), timeout=RPC_TIMEOUT)
        status = method.output_type.fields_by_name["status"].enum_type
        self.assertEqual(status.values_by_number[reply.status].name, "SERVING")


class InteropReflectionTest(vkharness.ServerTestCase):
    """The interop server's set: a file with imports, answered with them."""

    def test_transitive_imports_and_dynamic_call(self):
        server = self.start_interop()
        with grpc.insecure_channel(server.target) as channel:
            for version, pb, pb_grpc in REFLECTION_VERSIONS:
                with self.subTest(version=version):
                    s = ReflectionStream(channel, pb, pb_grpc)
                    _, resp = s.ask(
                        file_containing_symbol="grpc.testing.TestService")
                    self.assertEqual(s.close(), [])
                    protos = resp.file_descriptor_response.file_descriptor_proto
                    names = [descriptor_pb2.FileDescriptorProto.FromString(p)
                             .name for p in protos]
                    self.assertEqual(names[0], "grpc/testing/test.proto")
                    self.assertEqual(sorted(names[1:]),
                                     ["grpc/testing/empty.proto",
                                      "grpc/testing/messages.proto"])

                    pool = build_pool(protos)
                    service = pool.FindServiceByName(
                        "grpc.testing.TestService")
                    method = service.methods_by_name["UnaryCall"]
                    req_cls = message_class(pool, method.input_type.full_name)
                    resp_cls = message_class(pool,
                                             method.output_type.full_name)
                    call = channel.unary_unary(
                        f"/{service.full_name}/{method.name}",
                        request_serializer=req_cls.SerializeToString,
                        response_deserializer=resp_cls.FromString)
                    reply = call(req_cls(response_size=7), timeout=RPC_TIMEOUT)
                    self.assertEqual(len(reply.payload.body), 7)

            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(
                service="grpc.testing.TestService"), timeout=RPC_TIMEOUT)
            self.assertEqual(reply.status, SERVING)

    def _pipeline(self, channel, n):
        """Sends n requests before reading any answer; returns the call."""
        sent = threading.Event()

        def requests():
            for i in range(n):
                yield refl_v1.ServerReflectionRequest(
                    host=str(i),
                    file_containing_symbol="grpc.testing.TestService")
            sent.set()

        stub = refl_v1_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(requests(), timeout=60)
        # The server may end the call before it has read them all.
        sent.wait(timeout=10)
        time.sleep(1.0)
        return call

    def test_unread_answers_wait_in_order(self):
        """A client that sends many requests before reading any answer.

        Each answer is about 7 KB. With BDP probing off the client's stream
        window stays at 64 KB, so with the call's 256 KB send queue about 48
        answers fit: later requests wait on the server for on_writable, in
        order, and the half-close waits behind them. Past 64 waiting
        requests the stream ends with RESOURCE_EXHAUSTED, and the server is
        fine.
        """
        server = self.start_interop()
        options = [("grpc.http2.bdp_probe", 0)]
        with grpc.insecure_channel(server.target, options=options) as channel:
            call = self._pipeline(channel, 80)
            resps = list(call)
            self.assertEqual(call.code(), grpc.StatusCode.OK)
            self.assertEqual([r.valid_host for r in resps],
                             [str(i) for i in range(80)])
            for r in resps:
                self.assertEqual(
                    len(r.file_descriptor_response.file_descriptor_proto), 3)

            call = self._pipeline(channel, 400)
            with self.assertRaises(grpc.RpcError) as cm:
                list(call)
            self.assertEqual(cm.exception.code(),
                             grpc.StatusCode.RESOURCE_EXHAUSTED)

            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(
                service="grpc.testing.TestService"), timeout=RPC_TIMEOUT)
            self.assertEqual(reply.status, SERVING)

if __name__ == "__main__":
    unittest.main(verbosity=2)
