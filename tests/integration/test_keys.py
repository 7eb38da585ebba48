"""vkey.v1.KeyService end to end: apply (seed 000 S210-S240), manage
(S270-S280), read, and durability across crashes.

A real vkeyd (embedded redis-server unless a test starts its own), the
grpcio client, and RegistryService (operator tokens) to register vehicles,
users and owners. Signed keys are checked offline with the public key from
GetIssuerKeys, as a vehicle does. The outbox (the vehicle's delivery queue)
is read two ways: raw from Redis (the data model in docs/ARCHITECTURE.md)
and, when VehicleService is there, through the vehicle's own OpenChannel.
"""

import concurrent.futures
import hashlib
import os
import socket
import time
import unittest

import vkharness  # noqa: F401  (first: grafts the generated stubs)

import grpc

import vkcreds
from grpc.health.v1 import health_pb2, health_pb2_grpc
from vkey.v1 import common_pb2 as C
from vkey.v1 import keys_pb2 as K
from vkey.v1 import keys_pb2_grpc
from vkey.v1 import registry_pb2, registry_pb2_grpc
from vkey.v1 import vehicle_pb2, vehicle_pb2_grpc

RPC_TIMEOUT = 15.0
Code = grpc.StatusCode
VIN1 = "5YJ3E1EA7KF000001"
VIN2 = "5YJ3E1EA7KF000002"
VIN3 = "5YJ3E1EA7KF000003"
ALL_FUNCTIONS = list(range(1, 12))


class Resp:
    """A minimal Redis client (RESP2), to read the data model as stored."""

    def __init__(self, unix_path=None, port=None):
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(unix_path)
        else:
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


class KeysTestCase(vkharness.ServerTestCase):
    """A vkeyd per test with vehicles VIN1 (owner alice), VIN2 (owner
    alice, disabled later by tests that need it) and users alice, bob."""

    external_redis = False

    def setUp(self):
        super().setUp()
        self.redis_url = None
        if self.external_redis:
            self.redis, self.redis_url = self.start_redis()
        self.start()
        self.phone = vkcreds.Ed25519Key()
        self.vehicle_keys = {}
        for uid in ("alice", "bob"):
            self.registry.RegisterUser(
                registry_pb2.RegisterUserRequest(user_id=uid),
                metadata=self.op_md, timeout=RPC_TIMEOUT)
        for vin in (VIN1, VIN2):
            self.register_vehicle(vin, "alice")

    def start(self, kill=None):
        self.vkeyd = self.start_vkeyd(redis_url=self.redis_url)
        self.data_dir = os.path.join(self.workdir, "vkeyd-data")
        self.issuer = vkcreds.Ed25519Key.load(
            os.path.join(self.data_dir, "identity-issuer.key"))
        self.channel = grpc.insecure_channel(self.vkeyd.target)
        self.addCleanup(self.channel.close)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        self.vehicle = vehicle_pb2_grpc.VehicleServiceStub(self.channel)
        self.op_md = vkcreds.bearer(
            vkcreds.mint_token(self.issuer, "ops", "operator"))
        self.wait_serving()

    def wait_serving(self):
        """vkeyd listens before its Redis is up; health says when it is."""
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + 60
        while True:
            status = health.Check(health_pb2.HealthCheckRequest(),
                                  timeout=RPC_TIMEOUT).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            self.assertLess(time.monotonic(), deadline, "never SERVING")
            time.sleep(0.05)

    def redis_client(self):
        if self.redis_url:
            return Resp(port=self.redis.port)
        return Resp(unix_path=os.path.join(self.data_dir, "redis.sock"))

    def register_vehicle(self, vin, owner):
        vk = vkcreds.Ed25519Key()
        self.vehicle_keys[vin] = vk
        self.registry.RegisterVehicle(
            registry_pb2.RegisterVehicleRequest(vin=vin, public_key=vk.public,
                                                model="test"),
            metadata=self.op_md, timeout=RPC_TIMEOUT)
        if owner:
            self.registry.SetVehicleOwner(
                registry_pb2.SetVehicleOwnerRequest(vin=vin, user_id=owner),
                metadata=self.op_md, timeout=RPC_TIMEOUT)

    def user_md(self, uid):
        return vkcreds.bearer(vkcreds.mint_token(self.issuer, uid))

    def apply_request(self, phone=None, vin=VIN1, user="alice",
                      key_type=C.KEY_TYPE_OWNER, **fields):
        phone = phone or self.phone
        alg = (C.KEY_ALGORITHM_ECDSA_P256 if isinstance(phone, vkcreds.P256Key)
               else C.KEY_ALGORITHM_ED25519)
        fields.setdefault("holder_key_algorithm", alg)
        fields.setdefault("holder_public_key", phone.public)
        return K.ApplyKeyRequest(key_type=key_type, user_id=user, vin=vin,
                                 **fields)

    def apply(self, caller="alice", **kw):
        return self.keys.ApplyKey(self.apply_request(**kw),
                                  metadata=self.user_md(caller),
                                  timeout=RPC_TIMEOUT).key

    def manage(self, key_id, op, caller="alice", md=None, **fields):
        md = md if md is not None else self.user_md(caller)
        return self.keys.ManageKey(
            K.ManageKeyRequest(key_id=key_id, operation=op, **fields),
            metadata=md, timeout=RPC_TIMEOUT).key

    def get(self, key_id, caller="alice", md=None):
        md = md if md is not None else self.user_md(caller)
        return self.keys.GetKey(K.GetKeyRequest(key_id=key_id), metadata=md,
                                timeout=RPC_TIMEOUT).key

    def list_keys(self, md=None, page_size=0, **scope):
        """Every key of the scope, following page tokens."""
        md = md if md is not None else self.user_md("alice")
        out, token = [], ""
        for _ in range(100):
            resp = self.keys.ListKeys(
                K.ListKeysRequest(page=C.PageRequest(page_size=page_size,
                                                     page_token=token),
                                  **scope),
                metadata=md, timeout=RPC_TIMEOUT)
            out += resp.keys
            token = resp.next_page_token
            if not token:
                return out
        self.fail("pagination does not end")

    def assert_code(self, code, fn, *args, **kw):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args, **kw)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        return cm.exception.details()

    def issuer_keys(self):
        resp = self.keys.GetIssuerKeys(K.GetIssuerKeysRequest(),
                                       timeout=RPC_TIMEOUT)
        return {k.key_id: k.public_key for k in resp.keys}

    def assert_verifies(self, record):
        """The token checks offline and says what the record says."""
        pub = self.issuer_keys()[record.claims.issuer_key_id]
        self.assertTrue(vkcreds.verify_signed_key(record.key, pub))
        claims = C.KeyClaims.FromString(record.key.claims)
        self.assertEqual(claims, record.claims)
        return claims

    def audit(self, vin=""):
        resp = self.registry.ListAudit(
            registry_pb2.ListAuditRequest(
                vin=vin, page=C.PageRequest(page_size=500)),
            metadata=self.op_md, timeout=RPC_TIMEOUT)
        return list(resp.entries)

    def outbox(self, vin):
        """The vehicle's outbox as stored: [(seq, fields)]."""
        r = self.redis_client()
        try:
            entries = r.call("XRANGE", f"vk:veh:{{{vin}}}:outbox", "-", "+")
            seq = int(r.call("HGET", f"vk:veh:{{{vin}}}", "seq") or 0)
        finally:
            r.close()
        out = []
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2]))
            ms, sub = entry_id.decode().split("-")
            self.assertEqual(sub, "1")
            out.append((int(ms), fields))
        if out:
            self.assertEqual(out[-1][0], seq)
        return out

    def channel_events(self, vin, n):
        """The first `n` events through VehicleService.OpenChannel, or None
        when that service is not available."""
        path = "/vkey.v1.VehicleService/OpenChannel"
        md = vkcreds.vehicle_metadata(self.vehicle_keys[vin], vin, path)
        call = self.vehicle.OpenChannel(vehicle_pb2.OpenChannelRequest(vin=vin),
                                        metadata=md, timeout=RPC_TIMEOUT)
        events = []
        try:
            for ev in call:
                events.append(ev)
                if len(events) == n:
                    break
        except grpc.RpcError as e:
            if e.code() == Code.UNIMPLEMENTED:
                return None
            raise
        finally:
            call.cancel()
        return events

    def set_policy(self, vin, policy):
        """The vehicle reports its key policy (S260). Falls back to storing
        it as the data model does when VehicleService is not there."""
        path = "/vkey.v1.VehicleService/ReportManagementInfo"
        md = vkcreds.vehicle_metadata(self.vehicle_keys[vin], vin, path)
        req = vehicle_pb2.ReportManagementInfoRequest(
            vin=vin, policy=policy, store_digest=hashlib.sha256(b"").digest())
        try:
            self.vehicle.ReportManagementInfo(req, metadata=md,
                                              timeout=RPC_TIMEOUT)
            return
        except grpc.RpcError as e:
            if e.code() != Code.UNIMPLEMENTED:
                raise
        print("VehicleService not available: policy stored directly")
        r = self.redis_client()
        try:
            r.call("HSET", f"vk:veh:{{{vin}}}", "policy",
                   policy.SerializeToString())
        finally:
            r.close()


class Apply(KeysTestCase):

    def test_owner_keys_verify_offline_and_match_the_request(self):
        p256 = vkcreds.P256Key()
        now = int(time.time())
        ed = self.apply(request_id="ed")
        ec = self.apply(phone=p256, request_id="ec",
                        functions=[C.VEHICLE_FUNCTION_LOCK,
                                   C.VEHICLE_FUNCTION_UNLOCK],
                        validity=C.Validity(not_before=now - 60,
                                            not_after=now + 3600))
        issuers = self.issuer_keys()
        self.assertEqual(len(issuers), 1)
        for rec, phone, alg in ((ed, self.phone, C.KEY_ALGORITHM_ED25519),
                                (ec, p256, C.KEY_ALGORITHM_ECDSA_P256)):
            self.assertEqual(rec.status, C.KEY_STATUS_ACTIVE)
            self.assertEqual(rec.issued_by, "alice")
            self.assertGreaterEqual(rec.created_at, now - 5)
            c = self.assert_verifies(rec)
            self.assertEqual(c.format, 1)
            self.assertEqual(c.vin, VIN1)
            self.assertRegex(c.key_id, "^" + VIN1 + r"\.[0-9a-f]{16}$")
            self.assertEqual(c.holder_user_id, "alice")
            self.assertEqual(c.holder_key_algorithm, alg)
            self.assertEqual(c.holder_public_key, phone.public)
            self.assertEqual(c.key_type, C.KEY_TYPE_OWNER)
            self.assertEqual(c.version, 1)
            self.assertIn(c.issuer_key_id, issuers)
            self.assertLessEqual(abs(c.issued_at - now), 5)
        # Empty functions: everything an owner key may do.
        self.assertEqual(list(ed.claims.functions), ALL_FUNCTIONS)
        self.assertFalse(ed.claims.HasField("validity"))
        self.assertEqual(sorted(ec.claims.functions), [1, 2])
        self.assertEqual(ec.claims.validity.not_before, now - 60)
        self.assertEqual(ec.claims.validity.not_after, now + 3600)
        self.assertNotEqual(ed.claims.key_id, ec.claims.key_id)

        # A flipped byte anywhere makes the token worthless offline.
        pub = issuers[ed.claims.issuer_key_id]
        for field in ("claims", "signature"):
            for i in (0, len(getattr(ed.key, field)) // 2):
                bad = C.SignedKey()
                bad.CopyFrom(ed.key)
                raw = bytearray(getattr(bad, field))
                raw[i] ^= 0x01
                setattr(bad, field, bytes(raw))
                self.assertFalse(vkcreds.verify_signed_key(bad, pub))

        # The holder reads them back; the lists hold both.
        self.assertEqual(self.get(ed.claims.key_id), ed)
        self.assertEqual(self.get(ec.claims.key_id, md=self.op_md), ec)
        ids = {ed.claims.key_id, ec.claims.key_id}
        self.assertEqual({k.claims.key_id for k in self.list_keys(vin=VIN1)},
                         ids)
        self.assertEqual(
            {k.claims.key_id for k in self.list_keys(user_id="alice")}, ids)
        self.assertEqual(len(self.list_keys(md=self.op_md, vin=VIN1)), 2)

        # Audited, with the key.
        applied = [e for e in self.audit(VIN1) if e.operation == "ApplyKey"]
        self.assertEqual(sorted(e.key_id for e in applied), sorted(ids))
        self.assertTrue(all(e.actor == "user:alice" and e.result == "ok"
                            for e in applied))

    def test_other_key_types_and_their_default_functions(self):
        valet = self.apply(key_type=C.KEY_TYPE_VALET)
        self.assertEqual(list(valet.claims.functions), [1, 2, 3])
        now = int(time.time())
        temp = self.apply(key_type=C.KEY_TYPE_TEMPORARY,
                          validity=C.Validity(not_after=now + 600))
        self.assertEqual(list(temp.claims.functions), [1, 2])
        once = self.apply(key_type=C.KEY_TYPE_ONE_TIME)
        self.assertEqual(once.claims.max_uses, 1)
        shared = self.apply(key_type=C.KEY_TYPE_SHARED, max_uses=5,
                            functions=[C.VEHICLE_FUNCTION_CLIMATE])
        self.assertEqual(list(shared.claims.functions), [7])
        self.assertEqual(shared.claims.max_uses, 5)
        for rec in (valet, temp, once, shared):
            self.assert_verifies(rec)

    def test_who_may_apply(self):
        req = self.apply_request
        alice, bob = self.user_md("alice"), self.user_md("bob")
        # Bob is no owner of VIN1: keys for others come from the owner.
        detail = self.assert_code(Code.PERMISSION_DENIED, self.keys.ApplyKey,
                                  req(user="bob"), metadata=bob,
                                  timeout=RPC_TIMEOUT)
        self.assertIn("granted by the vehicle owner", detail)
        # Alice cannot apply in bob's name, nor an operator in anyone's.
        self.assert_code(Code.PERMISSION_DENIED, self.keys.ApplyKey,
                         req(user="bob"), metadata=alice, timeout=RPC_TIMEOUT)
        self.assert_code(Code.PERMISSION_DENIED, self.keys.ApplyKey, req(),
                         metadata=self.op_md, timeout=RPC_TIMEOUT)
        self.assert_code(Code.UNAUTHENTICATED, self.keys.ApplyKey, req(),
                         timeout=RPC_TIMEOUT)
        # Unknown vehicle, unknown user.
        self.assert_code(Code.NOT_FOUND, self.keys.ApplyKey, req(vin=VIN3),
                         metadata=alice, timeout=RPC_TIMEOUT)
        self.assert_code(Code.NOT_FOUND, self.keys.ApplyKey,
                         req(user="carol"), metadata=self.user_md("carol"),
                         timeout=RPC_TIMEOUT)
        # A vehicle without owner, a disabled vehicle, a disabled user.
        self.register_vehicle(VIN3, None)
        self.assert_code(Code.FAILED_PRECONDITION, self.keys.ApplyKey,
                         req(vin=VIN3), metadata=alice, timeout=RPC_TIMEOUT)
        self.registry.SetVehicleStatus(
            registry_pb2.SetVehicleStatusRequest(
                vin=VIN2, status=registry_pb2.ENTITY_STATUS_DISABLED),
            metadata=self.op_md, timeout=RPC_TIMEOUT)
        self.assert_code(Code.FAILED_PRECONDITION, self.keys.ApplyKey,
                         req(vin=VIN2), metadata=alice, timeout=RPC_TIMEOUT)
        self.registry.SetUserStatus(
            registry_pb2.SetUserStatusRequest(
                user_id="alice", status=registry_pb2.ENTITY_STATUS_DISABLED),
            metadata=self.op_md, timeout=RPC_TIMEOUT)
        self.assert_code(Code.FAILED_PRECONDITION, self.keys.ApplyKey, req(),
                         metadata=alice, timeout=RPC_TIMEOUT)
        # Nothing was issued, and the refusals are in the audit trail.
        self.assertEqual(self.list_keys(md=self.op_md, vin=VIN1), [])
        refusals = [(e.actor, e.result) for e in self.audit(VIN1)
                    if e.operation == "ApplyKey"]
        self.assertIn(("user:bob", "PERMISSION_DENIED"), refusals)
        self.assertIn(("user:alice", "FAILED_PRECONDITION"), refusals)
        self.assertTrue(any(e.operation == "ApplyKey" and
                            e.result == "NOT_FOUND" and VIN3 in e.detail
                            for e in self.audit()))

    def test_malformed_requests(self):
        now = int(time.time())
        big = "x" * 10240
        p256 = vkcreds.P256Key()
        off_curve = b"\x04" + bytes(64)
        bad = [
            dict(key_type=C.KEY_TYPE_UNSPECIFIED),
            dict(key_type=42),
            dict(holder_key_algorithm=C.KEY_ALGORITHM_UNSPECIFIED),
            dict(holder_public_key=self.phone.public[:31]),
            dict(holder_public_key=b""),
            dict(phone=p256, holder_public_key=off_curve),
            dict(phone=p256, holder_public_key=p256.public[:33]),  # compressed
            dict(phone=p256, holder_public_key=self.phone.public),
            dict(functions=[99]),
            dict(functions=[C.VEHICLE_FUNCTION_UNSPECIFIED]),
            dict(functions=[1, 2, 1]),
            dict(functions=[1] * 17),
            dict(validity=C.Validity(not_before=now + 100, not_after=now + 50)),
            dict(validity=C.Validity(not_after=now - 10)),
            dict(validity=C.Validity(not_after=now + 11 * 365 * 86400)),
            dict(key_type=C.KEY_TYPE_TEMPORARY),
            dict(key_type=C.KEY_TYPE_ONE_TIME, max_uses=2),
            dict(vin="5YJ3E1EA7KF00000O"),  # O is not a VIN character
            dict(vin=big),
            dict(user=big),
            dict(request_id=big),
            dict(request_id="has space"),
            dict(holder_public_key=os.urandom(10240)),
        ]
        for fields in bad:
            with self.subTest(fields=str(fields)[:80]):
                self.assert_code(Code.INVALID_ARGUMENT, self.keys.ApplyKey,
                                 self.apply_request(**fields),
                                 metadata=self.user_md("alice"),
                                 timeout=RPC_TIMEOUT)
        self.assertEqual(self.list_keys(vin=VIN1), [])

    def test_request_id_retry_returns_the_same_key(self):
        first = self.apply(request_id="phone-1-apply")
        again = self.apply(request_id="phone-1-apply")
        self.assertEqual(first.SerializeToString(), again.SerializeToString())
        # Even with other parameters: the first result stands.
        third = self.apply(request_id="phone-1-apply",
                           key_type=C.KEY_TYPE_VALET)
        self.assertEqual(third, first)
        self.assertEqual(len(self.list_keys(vin=VIN1)), 1)
        # Another caller's request id is another request.
        self.register_vehicle(VIN3, "bob")
        other = self.apply(caller="bob", user="bob", vin=VIN3,
                           request_id="phone-1-apply")
        self.assertNotEqual(other.claims.key_id, first.claims.key_id)
        # Without a request id every call is a new key.
        self.apply()
        self.apply()
        self.assertEqual(len(self.list_keys(vin=VIN1)), 3)
        issued = [f for _, f in self.outbox(VIN1) if f[b"t"] == b"1"]
        self.assertEqual(len(issued), 3)

    def test_get_and_list_rights_and_pages(self):
        recs = [self.apply() for _ in range(7)]
        ids = [r.claims.key_id for r in recs]
        bob = self.user_md("bob")
        self.assert_code(Code.PERMISSION_DENIED, self.get, ids[0], md=bob)
        self.assert_code(Code.NOT_FOUND, self.get, VIN1 + ".0123456789abcdef")
        self.assert_code(Code.INVALID_ARGUMENT, self.get, "nope")
        self.assert_code(Code.PERMISSION_DENIED, self.list_keys, md=bob,
                         vin=VIN1)
        self.assert_code(Code.PERMISSION_DENIED, self.list_keys, md=bob,
                         user_id="alice")
        self.assert_code(Code.NOT_FOUND, self.list_keys, md=self.op_md,
                         vin=VIN3)
        self.assert_code(Code.INVALID_ARGUMENT, self.list_keys)
        self.assert_code(Code.INVALID_ARGUMENT, self.keys.ListKeys,
                         K.ListKeysRequest(vin=VIN1, page=C.PageRequest(
                             page_token="garbage")),
                         metadata=self.user_md("alice"), timeout=RPC_TIMEOUT)
        self.assertEqual(self.list_keys(user_id="bob", md=bob), [])
        # Pages of 2 and of 3 list every key once, oldest first.
        for size in (2, 3, 500):
            got = [k.claims.key_id for k in self.list_keys(vin=VIN1,
                                                           page_size=size)]
            self.assertEqual(sorted(got), sorted(ids))
            self.assertEqual(len(got), len(set(got)))
        # A key deleted between pages is skipped, never repeated.
        first = self.keys.ListKeys(
            K.ListKeysRequest(vin=VIN1, page=C.PageRequest(page_size=3)),
            metadata=self.user_md("alice"), timeout=RPC_TIMEOUT)
        seen = [k.claims.key_id for k in first.keys]
        rest = [i for i in ids if i not in seen]
        self.manage(rest[0], K.KEY_OPERATION_DELETE)
        more = self.keys.ListKeys(
            K.ListKeysRequest(vin=VIN1, page=C.PageRequest(
                page_size=10, page_token=first.next_page_token)),
            metadata=self.user_md("alice"), timeout=RPC_TIMEOUT)
        self.assertEqual(sorted(seen + [k.claims.key_id for k in more.keys]),
                         sorted(i for i in ids if i != rest[0]))
        self.assertEqual(more.next_page_token, "")


class Manage(KeysTestCase):

    def test_state_machine_and_outbox(self):
        rec = self.apply(request_id="a1")
        kid = rec.claims.key_id
        FP = Code.FAILED_PRECONDITION
        s = self.manage(kid, K.KEY_OPERATION_SUSPEND, request_id="m1")
        self.assertEqual(s.status, C.KEY_STATUS_SUSPENDED)
        self.assertEqual(self.get(kid).status, C.KEY_STATUS_SUSPENDED)
        # A retry of the same instruction answers the same and does nothing.
        self.assertEqual(
            self.manage(kid, K.KEY_OPERATION_SUSPEND, request_id="m1"), s)
        self.assert_code(FP, self.manage, kid, K.KEY_OPERATION_SUSPEND)
        r = self.manage(kid, K.KEY_OPERATION_RESUME)
        self.assertEqual(r.status, C.KEY_STATUS_ACTIVE)
        self.assert_code(FP, self.manage, kid, K.KEY_OPERATION_RESUME)

        # New functions: a new token, version 2, signed again.
        u = self.manage(kid, K.KEY_OPERATION_SET_FUNCTIONS,
                        functions=[C.VEHICLE_FUNCTION_UNLOCK,
                                   C.VEHICLE_FUNCTION_DRIVE])
        self.assertEqual(u.claims.version, 2)
        self.assertEqual(list(u.claims.functions), [1, 3])
        self.assertNotEqual(u.key.signature, rec.key.signature)
        self.assert_verifies(u)
        self.assertEqual(u.claims.key_id, kid)
        self.assertEqual(u.claims.holder_public_key, self.phone.public)
        now = int(time.time())
        v = self.manage(kid, K.KEY_OPERATION_SET_VALIDITY,
                        validity=C.Validity(not_after=now + 7200))
        self.assertEqual(v.claims.version, 3)
        self.assertEqual(v.claims.validity.not_after, now + 7200)
        self.assertEqual(list(v.claims.functions), [1, 3])
        self.assert_verifies(v)
        self.assertEqual(self.get(kid), v)
        # Bad management instructions.
        IA = Code.INVALID_ARGUMENT
        self.assert_code(IA, self.manage, kid, K.KEY_OPERATION_UNSPECIFIED)
        self.assert_code(IA, self.manage, kid, 17)
        self.assert_code(IA, self.manage, kid, K.KEY_OPERATION_SET_FUNCTIONS,
                         functions=[42])
        self.assert_code(IA, self.manage, kid, K.KEY_OPERATION_SET_VALIDITY,
                         validity=C.Validity(not_before=now + 9,
                                             not_after=now + 8))
        self.assert_code(IA, self.manage, kid, K.KEY_OPERATION_REVOKE,
                         functions=[1])
        self.assert_code(IA, self.manage, "bad-id", K.KEY_OPERATION_REVOKE)
        self.assert_code(Code.NOT_FOUND, self.manage, VIN1 + ".00000000000000aa",
                         K.KEY_OPERATION_REVOKE)

        # Revoked is final, but for deleting (below).
        x = self.manage(kid, K.KEY_OPERATION_REVOKE)
        self.assertEqual(x.status, C.KEY_STATUS_REVOKED)
        self.assertEqual(x.claims.version, 3)
        for op in (K.KEY_OPERATION_SUSPEND, K.KEY_OPERATION_RESUME,
                   K.KEY_OPERATION_REVOKE, K.KEY_OPERATION_SET_FUNCTIONS):
            self.assert_code(FP, self.manage, kid, op)
        self.assertEqual(self.get(kid).status, C.KEY_STATUS_REVOKED)
        self.assertEqual(len(self.list_keys(vin=VIN1)), 1)  # still listed

        # Deleted: gone from the lists, kept for the audit trail, final.
        other = self.apply().claims.key_id
        d = self.manage(other, K.KEY_OPERATION_DELETE)
        self.assertEqual(d.status, C.KEY_STATUS_DELETED)
        self.assertEqual(self.get(other).status, C.KEY_STATUS_DELETED)
        self.assertEqual([k.claims.key_id for k in self.list_keys(vin=VIN1)],
                         [kid])
        self.assertEqual(
            [k.claims.key_id for k in self.list_keys(user_id="alice")], [kid])
        self.assert_code(FP, self.manage, other, K.KEY_OPERATION_RESUME)

        # The vehicle's outbox has every change once, in order (S240/S280).
        want = [(1, kid, 1, 1, True), (3, kid, 1, 2, False),
                (4, kid, 1, 1, True), (2, kid, 2, 1, True),
                (2, kid, 3, 1, True), (5, kid, 3, 3, False),
                (1, other, 1, 1, True), (6, other, 1, 4, False)]
        box = self.outbox(VIN1)
        self.assertEqual([seq for seq, _ in box], list(range(1, 9)))
        got = [(int(f[b"t"]), f[b"k"].decode(), int(f[b"v"]), int(f[b"s"]),
                b"sk" in f) for _, f in box]
        self.assertEqual(got, want)
        sk = C.SignedKey.FromString(box[3][1][b"sk"])
        self.assertEqual(sk, u.key)
        events = self.channel_events(VIN1, len(want))
        if events is None:
            print("VehicleService not available: outbox checked in Redis only")
        else:
            self.assertEqual([e.seq for e in events], list(range(1, 9)))
            self.assertEqual(
                [(e.type, e.key_id, e.key_version, e.status, e.HasField("key"))
                 for e in events], want)
            self.assertEqual(events[3].key, u.key)
        ops = [(e.operation, e.detail.split(" ")[0]) for e in self.audit(VIN1)
               if e.operation == "ManageKey" and e.result == "ok"]
        self.assertEqual(len(ops), 6)

        # A revoked key can still be deleted: it leaves the lists.
        d = self.manage(kid, K.KEY_OPERATION_DELETE)
        self.assertEqual(d.status, C.KEY_STATUS_DELETED)
        self.assertEqual(self.list_keys(vin=VIN1), [])
        self.assertEqual(self.list_keys(user_id="alice"), [])
        self.assert_code(FP, self.manage, kid, K.KEY_OPERATION_DELETE)

    def test_who_may_manage(self):
        kid = self.apply().claims.key_id
        bob = self.user_md("bob")
        PD = Code.PERMISSION_DENIED
        self.assert_code(PD, self.manage, kid, K.KEY_OPERATION_REVOKE, md=bob)
        self.assert_code(PD, self.manage, kid, K.KEY_OPERATION_SUSPEND,
                         md=self.op_md)
        # An operator may revoke any key.
        x = self.manage(kid, K.KEY_OPERATION_REVOKE, md=self.op_md)
        self.assertEqual(x.status, C.KEY_STATUS_REVOKED)
        audit = [(e.actor, e.operation, e.result) for e in self.audit(VIN1)
                 if e.key_id == kid]
        self.assertIn(("user:bob", "ManageKey", "PERMISSION_DENIED"), audit)
        self.assertIn(("operator:ops", "ManageKey", "ok"), audit)

    def test_holder_revoke_follows_the_vehicle_policy(self):
        # Only the Authorize flow (seed 001) hands keys to non-owners; the
        # holder-but-not-owner case arises here by transferring the vehicle.
        kid = self.apply().claims.key_id
        self.registry.SetVehicleOwner(
            registry_pb2.SetVehicleOwnerRequest(vin=VIN1, user_id="bob"),
            metadata=self.op_md, timeout=RPC_TIMEOUT)
        self.assertEqual(self.get(kid).status, C.KEY_STATUS_REVOKED)
        # No policy: a holder may not revoke or delete their key.
        detail = self.assert_code(Code.PERMISSION_DENIED, self.manage, kid,
                                  K.KEY_OPERATION_DELETE)
        self.assertIn("policy", detail)
        self.assert_code(Code.PERMISSION_DENIED, self.manage, kid,
                         K.KEY_OPERATION_SUSPEND)
        # With holder_may_revoke_own the rights hold; the key being revoked
        # already, the state machine answers.
        self.set_policy(VIN1, vehicle_pb2.KeyPolicy(holder_may_revoke_own=True))
        self.assert_code(Code.FAILED_PRECONDITION, self.manage, kid,
                         K.KEY_OPERATION_REVOKE)
        self.assert_code(Code.PERMISSION_DENIED, self.manage, kid,
                         K.KEY_OPERATION_SUSPEND)

    def test_policy_limits(self):
        policy = vehicle_pb2.KeyPolicy(
            max_keys=[vehicle_pb2.FunctionLimit(key_type=C.KEY_TYPE_OWNER,
                                                max_keys=3)],
            grantable_functions=[C.VEHICLE_FUNCTION_UNLOCK,
                                 C.VEHICLE_FUNCTION_LOCK,
                                 C.VEHICLE_FUNCTION_CLIMATE])
        self.set_policy(VIN1, policy)
        first = self.apply()
        self.apply()
        # Two at once for the last place: exactly one gets it.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(self.apply) for _ in range(2)]
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result().status)
                except grpc.RpcError as e:
                    outcomes.append(e.code())
        self.assertEqual(outcomes.count(C.KEY_STATUS_ACTIVE), 1, outcomes)
        self.assertTrue(set(outcomes) - {C.KEY_STATUS_ACTIVE} <=
                        {Code.RESOURCE_EXHAUSTED, Code.ABORTED}, outcomes)
        self.assertEqual(len(self.list_keys(vin=VIN1)), 3)
        self.assert_code(Code.RESOURCE_EXHAUSTED, self.apply)
        # A revoked key no longer counts; other types have their own count.
        self.manage(first.claims.key_id, K.KEY_OPERATION_REVOKE)
        self.apply()
        self.assert_code(Code.RESOURCE_EXHAUSTED, self.apply)
        # Owner keys may do anything; other types only what is grantable.
        valet = self.apply(key_type=C.KEY_TYPE_VALET)
        self.assertEqual(list(valet.claims.functions), [1, 2])
        self.assert_code(Code.PERMISSION_DENIED, self.apply,
                         key_type=C.KEY_TYPE_SHARED,
                         functions=[C.VEHICLE_FUNCTION_TRUNK])
        shared = self.apply(key_type=C.KEY_TYPE_SHARED,
                            functions=[C.VEHICLE_FUNCTION_CLIMATE])
        self.assert_code(Code.PERMISSION_DENIED, self.manage,
                         shared.claims.key_id, K.KEY_OPERATION_SET_FUNCTIONS,
                         functions=[C.VEHICLE_FUNCTION_DRIVE])
        u = self.manage(shared.claims.key_id, K.KEY_OPERATION_SET_FUNCTIONS,
                        functions=[C.VEHICLE_FUNCTION_LOCK])
        self.assertEqual((u.claims.version, list(u.claims.functions)), (2, [2]))


class Durability(KeysTestCase):

    def crash_and_restart(self):
        """kill -9 vkeyd (its embedded redis-server lives on until the new
        vkeyd stops it) and start it again on the same --data-dir."""
        self.vkeyd.kill()  # SIGKILL
        self.channel.close()
        self.start()

    def test_kill_9_after_acknowledged_writes(self):
        rec = self.apply(request_id="before-crash")
        self.crash_and_restart()
        self.assertEqual(self.get(rec.claims.key_id), rec)
        self.assertEqual(self.apply(request_id="before-crash"), rec)
        x = self.manage(rec.claims.key_id, K.KEY_OPERATION_REVOKE)
        self.crash_and_restart()
        got = self.get(rec.claims.key_id)
        self.assertEqual(got.status, C.KEY_STATUS_REVOKED)
        self.assertEqual(got, x)
        self.assertEqual([int(f[b"t"]) for _, f in self.outbox(VIN1)], [1, 5])


class RedisRestart(KeysTestCase):
    external_redis = True

    def test_status_survives_a_redis_restart(self):
        rec = self.apply()
        x = self.manage(rec.claims.key_id, K.KEY_OPERATION_REVOKE)
        port = self.redis.port
        self.redis.kill()  # SIGKILL: only what reached the AOF survives
        data = os.path.join(self.workdir, "redis")
        self.redis = self.spawn(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--dir", data, "--appendonly", "yes", "--save", ""], "redis")
        self.redis.port = port
        # Stopped last at tearDown, as the first one would have been.
        self._procs.remove(self.redis)
        self._procs.insert(0, self.redis)
        vkharness.wait_for_port(port, self.redis.proc)
        # vkeyd reconnects on its own (with back-off); the scripts are new
        # to this Redis (NOSCRIPT, then EVAL).
        deadline = time.monotonic() + 30
        while True:
            try:
                got = self.get(rec.claims.key_id)
                break
            except grpc.RpcError as e:
                if (e.code() != Code.UNAVAILABLE or
                        time.monotonic() > deadline):
                    raise
                time.sleep(0.1)
        self.assertEqual(got.status, C.KEY_STATUS_REVOKED)
        self.assertEqual(got, x)
        self.assert_code(Code.FAILED_PRECONDITION, self.manage,
                         rec.claims.key_id, K.KEY_OPERATION_RESUME)
        self.assertEqual(self.apply().status, C.KEY_STATUS_ACTIVE)


if __name__ == "__main__":
    unittest.main(verbosity=2)
