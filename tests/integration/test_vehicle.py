"""vkey.v1.VehicleService end to end: the vehicle end of seed 000.

Delivery of keys and their changes over the vehicle's long-lived channel
(S240/S250), acknowledgement, and key management information with
reconciliation (S260). Real binaries: a redis-server the test starts (so it
can look at the data model and kill pub/sub connections), one or two vkeyd
on it, and the grpcio client. Vehicles, users and owners come from
RegistryService (operator token), keys from KeyService (the owner's token);
events are checked as a vehicle would: seq from 1 without gaps, each seq
once per channel, in order, and signed keys verified offline with the
public key from GetIssuerKeys.

Nothing here asserts on timing: waits are bounded polls that fail the test
when the bound passes.
"""

import concurrent.futures
import hashlib
import os
import queue
import socket
import sys
import threading
import time
import unittest

import vkharness  # noqa: F401  (first: grafts the generated stubs)

import grpc

import vkcreds
from grpc.health.v1 import health_pb2, health_pb2_grpc
from vkey.v1 import common_pb2 as C
from vkey.v1 import keys_pb2 as K
from vkey.v1 import keys_pb2_grpc
from vkey.v1 import registry_pb2 as R
from vkey.v1 import registry_pb2_grpc
from vkey.v1 import vehicle_pb2 as V
from vkey.v1 import vehicle_pb2_grpc

Code = grpc.StatusCode
RPC_TIMEOUT = 15.0
EVENT_TIMEOUT = 20.0  # bound on waiting for one event; not a timing claim
VIN1 = "5YJ3E1EA7KF100001"
VIN2 = "5YJ3E1EA7KF100002"
SERVICE = "/vkey.v1.VehicleService/"


class Resp:
    """A minimal Redis client (RESP2), to look at the data model."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(RPC_TIMEOUT)
        self.reader = self.sock.makefile("rb")

    def close(self):
        self.reader.close()
        self.sock.close()

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.reader.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.reader.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"bad RESP line {line!r}")


def store_digest(stored):
    """SHA-256 over the sorted "key_id:version\\n" lines, as a vehicle."""
    lines = sorted(f"{k}:{v}\n" for k, v in stored)
    return hashlib.sha256("".join(lines).encode()).digest()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Channel:
    """One OpenChannel stream; a thread moves its events into a queue."""

    def __init__(self, stub, vkey, vin, md=None):
        md = md or vkcreds.vehicle_metadata(vkey, vin, SERVICE + "OpenChannel")
        self.call = stub.OpenChannel(V.OpenChannelRequest(vin=vin),
                                     metadata=md, timeout=300)
        self.items = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for ev in self.call:
                self.items.put(ev)
            self.items.put(None)
        except grpc.RpcError as e:
            self.items.put(e)

    def next(self):
        try:
            item = self.items.get(timeout=EVENT_TIMEOUT)
        except queue.Empty:
            raise AssertionError("no event within the bound") from None
        if not isinstance(item, V.KeyEvent):
            raise AssertionError(f"channel ended: {item!r}")
        return item

    def take(self, n):
        return [self.next() for _ in range(n)]

    def end(self):
        """Waits for the stream to end; returns the RpcError (or None)."""
        while True:
            try:
                item = self.items.get(timeout=EVENT_TIMEOUT)
            except queue.Empty:
                raise AssertionError("channel did not end") from None
            if not isinstance(item, V.KeyEvent):
                return item

    def close(self):
        self.call.cancel()
        self.thread.join(10)


class VehicleTestCase(vkharness.ServerTestCase):
    """A redis-server and a vkeyd on it; users alice and bob; VIN1 owned
    by alice."""

    vkeyd_args = ()

    def setUp(self):
        super().setUp()
        self.redis_proc, self.redis_url = self.start_redis()
        self.vehicle_keys = {}
        self.channels = []
        self.addCleanup(self.close_channels)
        self.connect(self.start_vkeyd(*self.vkeyd_args,
                                      redis_url=self.redis_url))
        self.issuer = vkcreds.Ed25519Key.load(
            os.path.join(self.workdir, "vkeyd-data", "identity-issuer.key"))
        self.op_md = vkcreds.bearer(
            vkcreds.mint_token(self.issuer, "ops", "operator"))
        for uid in ("alice", "bob"):
            self.registry.RegisterUser(R.RegisterUserRequest(user_id=uid),
                                       metadata=self.op_md,
                                       timeout=RPC_TIMEOUT)
        self.register_vehicle(VIN1, "alice")

    # --- plumbing -----------------------------------------------------------

    def connect(self, vkeyd):
        self.vkeyd = vkeyd
        self.grpc_channel = grpc.insecure_channel(vkeyd.target)
        self.addCleanup(self.grpc_channel.close)
        self.registry = registry_pb2_grpc.RegistryServiceStub(
            self.grpc_channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(self.grpc_channel)
        self.vehicle = vehicle_pb2_grpc.VehicleServiceStub(self.grpc_channel)
        self.wait_serving()

    def wait_serving(self):
        """vkeyd listens before its Redis is up; health says when it is."""
        health = health_pb2_grpc.HealthStub(self.grpc_channel)
        deadline = time.monotonic() + 60
        while health.Check(health_pb2.HealthCheckRequest(),
                           timeout=RPC_TIMEOUT).status != \
                health_pb2.HealthCheckResponse.SERVING:
            self.assertLess(time.monotonic(), deadline, "never SERVING")
            time.sleep(0.05)

    def close_channels(self):
        for ch in self.channels:
            ch.close()

    def redis(self):
        r = Resp(self.redis_proc.port)
        self.addCleanup(r.close)
        return r

    def poll(self, what, fn, bound=30.0):
        deadline = time.monotonic() + bound
        while True:
            value = fn()
            if value:
                return value
            self.assertLess(time.monotonic(), deadline, f"never {what}")
            time.sleep(0.02)

    def register_vehicle(self, vin, owner, stub=None):
        vk = vkcreds.Ed25519Key()
        self.vehicle_keys[vin] = vk
        stub = stub or self.registry
        stub.RegisterVehicle(
            R.RegisterVehicleRequest(vin=vin, public_key=vk.public,
                                     model="test"),
            metadata=self.op_md, timeout=RPC_TIMEOUT)
        if owner:
            stub.SetVehicleOwner(
                R.SetVehicleOwnerRequest(vin=vin, user_id=owner),
                metadata=self.op_md, timeout=RPC_TIMEOUT)

    def user_md(self, uid="alice"):
        return vkcreds.bearer(vkcreds.mint_token(self.issuer, uid))

    def vmd(self, method, vin=VIN1, key=None, **kw):
        key = key or self.vehicle_keys[vin]
        return vkcreds.vehicle_metadata(key, vin, SERVICE + method, **kw)

    def apply(self, vin=VIN1, user="alice", keys=None):
        phone = vkcreds.Ed25519Key()
        req = K.ApplyKeyRequest(
            key_type=C.KEY_TYPE_OWNER, user_id=user, vin=vin,
            holder_key_algorithm=C.KEY_ALGORITHM_ED25519,
            holder_public_key=phone.public)
        return (keys or self.keys).ApplyKey(
            req, metadata=self.user_md(user), timeout=RPC_TIMEOUT).key

    def manage(self, key_id, op, keys=None):
        return (keys or self.keys).ManageKey(
            K.ManageKeyRequest(key_id=key_id, operation=op),
            metadata=self.user_md(), timeout=RPC_TIMEOUT).key

    def open(self, vin=VIN1, stub=None, **kw):
        ch = Channel(stub or self.vehicle, self.vehicle_keys.get(vin), vin,
                     **kw)
        self.channels.append(ch)
        return ch

    def wait_subscribed(self, vin=VIN1, n=1):
        """Until n instances listen to the vehicle's notify channel: from
        then on an event can only reach the channel through a notification
        (or a re-read), not through the read at open."""
        r = self.redis()
        name = f"vk:veh:{{{vin}}}:notify"
        self.poll("subscribed",
                  lambda: r.call("PUBSUB", "NUMSUB", name)[1] >= n)

    def ack(self, seq, vin=VIN1):
        return self.vehicle.AckEvents(V.AckEventsRequest(vin=vin, seq=seq),
                                      metadata=self.vmd("AckEvents", vin),
                                      timeout=RPC_TIMEOUT).acked_seq

    def report(self, stored=(), vin=VIN1, request_id="", digest=None,
               **fields):
        stored = list(stored)
        if digest is None:
            digest = store_digest(stored)
        req = V.ReportManagementInfoRequest(
            request_id=request_id, vin=vin, store_digest=digest,
            stored_keys=[V.StoredKey(key_id=k, version=v) for k, v in stored],
            **fields)
        return self.vehicle.ReportManagementInfo(
            req, metadata=self.vmd("ReportManagementInfo", vin),
            timeout=RPC_TIMEOUT)

    def assert_code(self, code, fn, *args, **kw):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args, **kw)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        return cm.exception.details()

    def issuer_keys(self):
        resp = self.keys.GetIssuerKeys(K.GetIssuerKeysRequest(),
                                       timeout=RPC_TIMEOUT)
        return {k.key_id: k.public_key for k in resp.keys}

    def assert_key_verifies(self, signed, key_id):
        claims = C.KeyClaims.FromString(signed.claims)
        self.assertEqual(claims.key_id, key_id)
        self.assertEqual(claims.vin, VIN1)
        pub = self.issuer_keys()[claims.issuer_key_id]
        self.assertTrue(vkcreds.verify_signed_key(signed, pub))
        return claims

    def assert_events(self, events, expected):
        """`expected`: [(seq, type, key_id)]."""
        self.assertEqual([(e.seq, e.type, e.key_id) for e in events],
                         expected)


class ChannelTest(VehicleTestCase):

    def test_live_push_and_changes_in_order(self):
        ch = self.open()
        self.wait_subscribed()
        key = self.apply()
        ev = ch.next()
        self.assertEqual((ev.seq, ev.type, ev.key_id, ev.status),
                         (1, V.KEY_EVENT_TYPE_ISSUED, key.claims.key_id,
                          C.KEY_STATUS_ACTIVE))
        self.assertEqual(ev.key_version, key.claims.version)
        self.assertGreater(ev.at_ms, 0)
        # The vehicle checks the delivered key offline.
        claims = self.assert_key_verifies(ev.key, key.claims.key_id)
        self.assertEqual(claims, key.claims)

        kid = key.claims.key_id
        self.manage(kid, K.KEY_OPERATION_SUSPEND)
        self.manage(kid, K.KEY_OPERATION_RESUME)
        self.manage(kid, K.KEY_OPERATION_REVOKE)
        events = ch.take(3)
        self.assert_events(events, [
            (2, V.KEY_EVENT_TYPE_SUSPENDED, kid),
            (3, V.KEY_EVENT_TYPE_RESUMED, kid),
            (4, V.KEY_EVENT_TYPE_REVOKED, kid)])
        self.assertEqual([e.status for e in events],
                         [C.KEY_STATUS_SUSPENDED, C.KEY_STATUS_ACTIVE,
                          C.KEY_STATUS_REVOKED])

    def test_offline_vehicle_gets_everything_once_in_order(self):
        key = self.apply()
        kid = key.claims.key_id
        self.manage(kid, K.KEY_OPERATION_REVOKE)
        ch = self.open()
        first = ch.take(2)
        self.assert_events(first, [(1, V.KEY_EVENT_TYPE_ISSUED, kid),
                                   (2, V.KEY_EVENT_TYPE_REVOKED, kid)])
        self.assert_key_verifies(first[0].key, kid)
        # Exactly once: the next event on this channel is the next seq,
        # not a second copy of 1 or 2 (however many reads and wake-ups).
        self.wait_subscribed()
        key2 = self.apply()
        self.assert_events([ch.next()], [(3, V.KEY_EVENT_TYPE_ISSUED,
                                          key2.claims.key_id)])

    def test_ack_then_reconnect_starts_after_ack(self):
        k1 = self.apply().claims.key_id
        k2 = self.apply().claims.key_id
        ch = self.open()
        self.assert_events(ch.take(2), [(1, V.KEY_EVENT_TYPE_ISSUED, k1),
                                        (2, V.KEY_EVENT_TYPE_ISSUED, k2)])
        self.assertEqual(self.ack(2), 2)
        ch.close()
        # Acknowledged events leave the outbox.
        r = self.redis()
        self.assertEqual(r.call("XLEN", f"vk:veh:{{{VIN1}}}:outbox"), 0)
        self.assertEqual(r.call("HGET", f"vk:veh:{{{VIN1}}}", "acked"), b"2")
        ch = self.open()
        self.wait_subscribed()
        k3 = self.apply().claims.key_id
        self.assert_events([ch.next()], [(3, V.KEY_EVENT_TYPE_ISSUED, k3)])
        # Acks only move forward and never past the last event.
        self.assertEqual(self.ack(1), 2)
        detail = self.assert_code(Code.OUT_OF_RANGE, self.ack, 4)
        self.assertIn("beyond", detail)

    def test_reconnect_without_ack_resends_same_seqs(self):
        k1 = self.apply().claims.key_id
        self.manage(k1, K.KEY_OPERATION_SUSPEND)
        ch = self.open()
        first = ch.take(2)
        ch.close()
        ch = self.open()
        again = ch.take(2)
        self.assertEqual([(e.seq, e.type, e.key_id) for e in again],
                         [(e.seq, e.type, e.key_id) for e in first])
        self.assertEqual(again[0].key, first[0].key)
        # Partly acknowledged: the reconnect starts after the ack.
        self.assertEqual(self.ack(1), 1)
        ch.close()
        ch = self.open()
        self.assert_events([ch.next()],
                           [(2, V.KEY_EVENT_TYPE_SUSPENDED, k1)])

    def test_lost_notifications_recovered_after_subscriber_reconnect(self):
        ch = self.open()
        self.wait_subscribed()
        k1 = self.apply().claims.key_id
        self.assert_events([ch.next()], [(1, V.KEY_EVENT_TYPE_ISSUED, k1)])
        # An event whose notification never reached this instance: written
        # as the data model says, but not published.
        r = self.redis()
        ghost = VIN1 + ".00000000000000aa"
        r.call("XADD", f"vk:veh:{{{VIN1}}}:outbox", "2-1", "t", "5", "k",
               ghost, "v", "1", "s", "3", "at", "1")
        r.call("HINCRBY", f"vk:veh:{{{VIN1}}}", "seq", "1")
        # Drop vkeyd's pub/sub connection: it reconnects, resubscribes and
        # every channel of the vehicle reads its outbox again.
        self.assertGreaterEqual(r.call("CLIENT", "KILL", "TYPE", "pubsub"),
                                1)
        self.assert_events([ch.next()], [(2, V.KEY_EVENT_TYPE_REVOKED, ghost)])
        # A disabled vehicle's channel fails closed on its next read.
        self.registry.SetVehicleStatus(
            R.SetVehicleStatusRequest(vin=VIN1,
                                      status=R.ENTITY_STATUS_DISABLED),
            metadata=self.op_md, timeout=RPC_TIMEOUT)
        self.wait_subscribed()
        r.call("CLIENT", "KILL", "TYPE", "pubsub")
        err = ch.end()
        self.assertIsNotNone(err)
        self.assertEqual(err.code(), Code.FAILED_PRECONDITION)

    def test_two_channels_of_one_vehicle_share_a_subscription(self):
        a = self.open()
        b = self.open()
        self.wait_subscribed()
        k1 = self.apply().claims.key_id
        for ch in (a, b):
            self.assert_events([ch.next()],
                               [(1, V.KEY_EVENT_TYPE_ISSUED, k1)])
        r = self.redis()
        name = f"vk:veh:{{{VIN1}}}:notify"
        self.assertEqual(r.call("PUBSUB", "NUMSUB", name)[1], 1)
        a.close()
        k2 = self.apply().claims.key_id
        self.assert_events([b.next()], [(2, V.KEY_EVENT_TYPE_ISSUED, k2)])
        b.close()
        # The last channel gone, the instance stops listening.
        self.poll("unsubscribed",
                  lambda: r.call("PUBSUB", "NUMSUB", name)[1] == 0)


    def test_drain_sends_vehicles_elsewhere(self):
        ch = self.open()
        self.wait_subscribed()
        # SIGTERM: open channels end at once with UNAVAILABLE, so vehicles
        # reconnect to another instance instead of waiting out the drain.
        self.assertEqual(self.vkeyd.stop(), 0)
        err = ch.end()
        self.assertIsNotNone(err)
        self.assertEqual(err.code(), Code.UNAVAILABLE)
        self.assertIn("reconnect", err.details())


class FailoverTest(VehicleTestCase):

    def test_second_instance_serves_after_first_is_killed(self):
        # Both instances sign with one key and trust one identity issuer.
        signing = os.path.join(self.workdir, "vkeyd-data", "signing.key")
        pub = os.path.join(self.workdir, "issuer.pub")
        with open(pub, "w") as f:
            f.write(self.issuer.public.hex() + "\n")
        second = self.start_vkeyd("--signing-key", signing,
                                  "--identity-issuer-pub", pub,
                                  redis_url=self.redis_url, name="vkeyd2")
        first_keys = self.keys
        ch = self.open()
        self.wait_subscribed()
        k1 = self.apply().claims.key_id
        self.assert_events([ch.next()], [(1, V.KEY_EVENT_TYPE_ISSUED, k1)])

        self.vkeyd.kill()  # SIGKILL: no drain, no goodbye
        err = ch.end()
        self.assertIsNotNone(err)
        self.assertEqual(err.code(), Code.UNAVAILABLE)

        self.connect(second)
        ch = self.open()
        # Not acknowledged: delivered again, same seq, same token.
        ev = ch.next()
        self.assert_events([ev], [(1, V.KEY_EVENT_TYPE_ISSUED, k1)])
        self.assert_key_verifies(ev.key, k1)
        self.assertEqual(self.ack(1), 1)
        self.wait_subscribed()
        k2 = self.apply().claims.key_id
        self.manage(k1, K.KEY_OPERATION_REVOKE)
        events = ch.take(2)
        self.assert_events(events, [(2, V.KEY_EVENT_TYPE_ISSUED, k2),
                                    (3, V.KEY_EVENT_TYPE_REVOKED, k1)])
        self.assert_key_verifies(events[0].key, k2)
        self.assertIsNot(first_keys, self.keys)


class AuthTest(VehicleTestCase):

    def test_credentials(self):
        self.register_vehicle(VIN2, "alice")
        open_req = V.OpenChannelRequest(vin=VIN1)

        def first(md):
            call = self.vehicle.OpenChannel(open_req, metadata=md,
                                            timeout=RPC_TIMEOUT)
            return next(call)

        # Another vehicle's valid credential.
        self.assert_code(Code.PERMISSION_DENIED, first,
                         self.vmd("OpenChannel", VIN2))
        # VIN1's name, VIN2's key: the signature does not verify.
        self.assert_code(Code.UNAUTHENTICATED, first,
                         self.vmd("OpenChannel", VIN1,
                                  key=self.vehicle_keys[VIN2]))
        # Stale assertion.
        self.assert_code(Code.UNAUTHENTICATED, first,
                         self.vmd("OpenChannel", now=int(time.time()) - 600))
        # Signed for another method.
        md = self.vmd("AckEvents")
        self.assert_code(Code.UNAUTHENTICATED, first, md)
        # Replayed assertion: the same nonce twice.
        md = self.vmd("AckEvents")
        req = V.AckEventsRequest(vin=VIN1, seq=0)
        self.vehicle.AckEvents(req, metadata=md, timeout=RPC_TIMEOUT)
        self.assert_code(Code.UNAUTHENTICATED, self.vehicle.AckEvents, req,
                         metadata=md, timeout=RPC_TIMEOUT)
        # No credential at all.
        self.assert_code(Code.UNAUTHENTICATED, self.vehicle.AckEvents, req,
                         timeout=RPC_TIMEOUT)
        # A VIN nobody registered.
        ghost = "5YJ3E1EA7KF199999"
        stranger = vkcreds.Ed25519Key()
        self.assert_code(
            Code.UNAUTHENTICATED, self.vehicle.AckEvents,
            V.AckEventsRequest(vin=ghost),
            metadata=vkcreds.vehicle_metadata(stranger, ghost,
                                              SERVICE + "AckEvents"),
            timeout=RPC_TIMEOUT)
        # Not a VIN.
        self.assert_code(Code.INVALID_ARGUMENT, self.vehicle.AckEvents,
                         V.AckEventsRequest(vin="not-a-vin"),
                         metadata=self.vmd("AckEvents"), timeout=RPC_TIMEOUT)


class ReportTest(VehicleTestCase):

    def test_lost_key_is_delivered_again(self):
        key = self.apply()
        kid = key.claims.key_id
        ch = self.open()
        self.assert_events([ch.next()], [(1, V.KEY_EVENT_TYPE_ISSUED, kid)])
        self.assertEqual(self.ack(1), 1)
        # The vehicle lost its store: it reports no keys.
        resp = self.report(request_id="lost-1")
        self.assertEqual((resp.redelivered, resp.revoked_again,
                          resp.digest_matches), (1, 0, True))
        ev = ch.next()
        self.assert_events([ev], [(2, V.KEY_EVENT_TYPE_ISSUED, kid)])
        self.assertEqual(ev.key_version, key.claims.version)
        self.assert_key_verifies(ev.key, kid)
        # In sync now (holding the key, all acknowledged): nothing to do.
        self.assertEqual(self.ack(2), 2)
        resp = self.report([(kid, key.claims.version)])
        self.assertEqual((resp.redelivered, resp.revoked_again,
                          resp.digest_matches), (0, 0, True))
        # A key held at another version is delivered again as UPDATED.
        resp = self.report([(kid, key.claims.version + 5)])
        self.assertEqual(resp.redelivered, 1)
        ev = ch.next()
        self.assert_events([ev], [(3, V.KEY_EVENT_TYPE_UPDATED, kid)])
        self.assertEqual(ev.key_version, key.claims.version)

    def test_revoked_key_still_held_is_revoked_again(self):
        kid = self.apply().claims.key_id
        self.manage(kid, K.KEY_OPERATION_REVOKE)
        ch = self.open()
        ch.take(2)
        # Events not yet acknowledged will bring the vehicle up to date:
        # reconciliation leaves those keys alone.
        resp = self.report([(kid, 1)], request_id="early")
        self.assertEqual((resp.redelivered, resp.revoked_again), (0, 0))
        self.assertEqual(self.ack(2), 2)
        unknown = VIN1 + ".0123456789abcdef"
        stored = [(kid, 1), (unknown, 3)]
        resp = self.report(stored, request_id="r-1")
        self.assertEqual((resp.redelivered, resp.revoked_again,
                          resp.digest_matches), (0, 2, True))
        self.assert_events(ch.take(2), [(3, V.KEY_EVENT_TYPE_REVOKED, kid),
                                        (4, V.KEY_EVENT_TYPE_REVOKED,
                                         unknown)])
        # A retry of the same request answers the same and appends nothing.
        again = self.report(stored, request_id="r-1")
        self.assertEqual(again, resp)
        r = self.redis()
        self.assertEqual(r.call("HGET", f"vk:veh:{{{VIN1}}}", "seq"), b"4")
        # Audited under the vehicle's name.
        audit = self.registry.ListAudit(
            R.ListAuditRequest(vin=VIN1, page=C.PageRequest(page_size=500)),
            metadata=self.op_md, timeout=RPC_TIMEOUT).entries
        ops = [(a.operation, a.key_id, a.result) for a in audit
               if a.actor == "vehicle:" + VIN1]
        self.assertIn(("RevokeKeyAgain", kid, "ok"), ops)
        self.assertIn(("RevokeKeyAgain", unknown, "ok"), ops)
        self.assertIn(("ReportManagementInfo", "", "ok"), ops)

    def test_digest_policy_and_usage(self):
        key = self.apply()
        kid = key.claims.key_id
        ch = self.open()
        ch.take(1)
        self.assertEqual(self.ack(1), 1)
        stored = [(kid, key.claims.version)]
        resp = self.report(stored, digest=b"\x00" * 32)
        self.assertFalse(resp.digest_matches)
        self.assertFalse(self.report(stored, digest=b"").digest_matches)
        policy = V.KeyPolicy(
            sharing_allowed=True, max_share_depth=2,
            max_code_set_ttl_seconds=3600,
            grantable_functions=[C.VEHICLE_FUNCTION_UNLOCK,
                                 C.VEHICLE_FUNCTION_LOCK],
            max_keys=[V.FunctionLimit(key_type=C.KEY_TYPE_SHARED,
                                      max_keys=4)])
        usage = [V.KeyUsage(key_id=kid, uses=7, last_used_at=1700000000)]
        resp = self.report(stored, policy=policy, usage=usage)
        self.assertTrue(resp.digest_matches)
        r = self.redis()
        stored_policy = r.call("HGET", f"vk:veh:{{{VIN1}}}", "policy")
        self.assertEqual(V.KeyPolicy.FromString(stored_policy), policy)
        key_hash = f"vk:veh:{{{VIN1}}}:key:{kid}"
        self.assertEqual(r.call("HMGET", key_hash, "uses", "last_used_at"),
                         [b"7", b"1700000000"])
        # Usage never goes backwards.
        self.report(stored, usage=[V.KeyUsage(key_id=kid, uses=3)])
        self.assertEqual(r.call("HGET", key_hash, "uses"), b"7")

    def test_bad_reports_are_refused(self):
        other = VIN2 + ".0123456789abcdef"
        mine = VIN1 + ".0123456789abcdef"
        many = [(f"{VIN1}.{i:016x}", 1) for i in range(1001)]
        cases = [
            dict(stored=many),
            dict(usage=[V.KeyUsage(key_id=f"{VIN1}.{i:016x}")
                        for i in range(1001)]),
            dict(stored=[(other, 1)]),
            dict(stored=[("not-a-key", 1)]),
            dict(stored=[(mine, 1), (mine, 2)]),
            dict(digest=b"short"),
            dict(usage=[V.KeyUsage(key_id=other)]),
            dict(usage=[V.KeyUsage(key_id=mine, last_used_at=-1)]),
            dict(policy=V.KeyPolicy(max_share_depth=9)),
            dict(policy=V.KeyPolicy(max_code_set_ttl_seconds=31 * 86400)),
            dict(policy=V.KeyPolicy(grantable_functions=[1] * 17)),
            dict(policy=V.KeyPolicy(grantable_functions=[99])),
            dict(policy=V.KeyPolicy(grantable_functions=[0])),
            dict(policy=V.KeyPolicy(max_keys=[V.FunctionLimit(key_type=9)])),
            dict(request_id="has space"),
        ]
        for case in cases:
            with self.subTest(case=str(case)[:80]):
                self.assert_code(Code.INVALID_ARGUMENT, self.report, **case)
        r = self.redis()
        self.assertIsNone(r.call("HGET", f"vk:veh:{{{VIN1}}}", "policy"))
        self.assertEqual(int(r.call("HGET", f"vk:veh:{{{VIN1}}}", "seq") or 0),
                         0)
        # 1000 keys is within bounds (all unknown here: revoked again).
        resp = self.report(many[:1000])
        self.assertEqual(resp.revoked_again, 1000)


class BackPressureTest(VehicleTestCase):
    """A send queue of 1 KiB: the channel stops at every few events and
    resumes when the queue drains, across many outbox pages."""

    vkeyd_args = ("--send-queue", "1024")

    def test_many_events_through_a_small_send_queue(self):
        n = 1000
        ids = [f"{VIN1}.{i:016x}" for i in range(n)]
        # Held keys the service never issued: each is revoked again, which
        # fills the outbox with n events while no channel is open.
        self.assertEqual(self.report([(k, 1) for k in ids]).revoked_again, n)
        ch = self.open()
        events = ch.take(n)
        self.assertEqual([e.seq for e in events], list(range(1, n + 1)))
        self.assertEqual(sorted(e.key_id for e in events), ids)
        self.assertTrue(all(e.type == V.KEY_EVENT_TYPE_REVOKED
                            for e in events))
        # And live events still follow, once each.
        self.wait_subscribed()
        key = self.apply()
        self.assert_events([ch.next()], [(n + 1, V.KEY_EVENT_TYPE_ISSUED,
                                          key.claims.key_id)])


class IdleChannelsTest(VehicleTestCase):

    N = 200

    def setUp(self):
        # A small ASan quarantine so that freed memory is reused and RSS
        # reflects what the channels hold.
        self.vkeyd_env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:"
                          "quarantine_size_mb=1"}
        super().setUp()

    def start_vkeyd(self, *extra, **kw):
        kw.setdefault("env", getattr(self, "vkeyd_env", None))
        return super().start_vkeyd(*extra, **kw)

    def test_idle_channels_are_small(self):
        vins = [f"5YJ3E1EA7KF2{i:05d}" for i in range(self.N)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda v: self.register_vehicle(v, None), vins))
        # Four connections of 50 streams (vkeyd allows 100 per connection).
        conns = [grpc.insecure_channel(
            self.vkeyd.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(4)]
        for c in conns:
            self.addCleanup(c.close)
        stubs = [vehicle_pb2_grpc.VehicleServiceStub(c) for c in conns]
        # Warm up every code path once, then measure.
        warm = self.open(VIN1, stub=stubs[0])
        self.wait_subscribed(VIN1)
        warm.close()
        r = self.redis()
        self.poll("idle", lambda: r.call("PUBSUB", "NUMSUB",
                                         f"vk:veh:{{{VIN1}}}:notify")[1] == 0)
        before = rss_kib(self.vkeyd.proc.pid)
        calls = []
        for i, vin in enumerate(vins):
            md = vkcreds.vehicle_metadata(self.vehicle_keys[vin], vin,
                                          SERVICE + "OpenChannel")
            calls.append(stubs[i % 4].OpenChannel(
                V.OpenChannelRequest(vin=vin), metadata=md, timeout=300))
        self.poll("all subscribed",
                  lambda: len(r.call("PUBSUB", "CHANNELS",
                                     "vk:veh:{5YJ3E1EA7KF2*}:notify"))
                  == self.N, bound=60)
        after = rss_kib(self.vkeyd.proc.pid)
        per = (after - before) * 1024 / self.N
        sys.stderr.write(
            f"\n{self.N} idle vehicle channels: RSS {before} -> {after} KiB, "
            f"{per:.0f} bytes per channel\n")
        self.assertLess(per, 64 * 1024)
        # They are live: one event reaches one of them.
        probe = vins[17]
        ch_key = self.vehicle_keys[probe]
        self.vehicle.ReportManagementInfo(
            V.ReportManagementInfoRequest(
                vin=probe, stored_keys=[V.StoredKey(
                    key_id=probe + ".00000000000000ff", version=1)]),
            metadata=vkcreds.vehicle_metadata(
                ch_key, probe, SERVICE + "ReportManagementInfo"),
            timeout=RPC_TIMEOUT)
        ev = next(calls[17])
        self.assertEqual((ev.seq, ev.type), (1, V.KEY_EVENT_TYPE_REVOKED))
        for c in calls:
            c.cancel()
        self.poll("all unsubscribed",
                  lambda: not r.call("PUBSUB", "CHANNELS",
                                     "vk:veh:{5YJ3E1EA7KF2*}:notify"),
                  bound=60)


if __name__ == "__main__":
    unittest.main()
