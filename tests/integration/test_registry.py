"""vkey.v1.RegistryService end to end: the operator API and the audit trail.

A real vkeyd (with its embedded redis-server) and the grpcio client. Tokens
are minted with the identity issuer vkeyd writes into its data dir, as
`vkeyctl token` does. Everything goes through the public API.
"""

import os
import time
import unittest

import vkharness  # noqa: F401  (first: grafts the generated stubs)

import grpc

import vkcreds
from grpc.health.v1 import health_pb2, health_pb2_grpc
from vkey.v1 import common_pb2, keys_pb2, keys_pb2_grpc
from vkey.v1 import identity_pb2, registry_pb2, registry_pb2_grpc

RPC_TIMEOUT = 15.0
ACTIVE = registry_pb2.ENTITY_STATUS_ACTIVE
DISABLED = registry_pb2.ENTITY_STATUS_DISABLED
VINS = ["1HGCM82633A%06d" % i for i in range(7)]
OPERATOR = "ops-alice"


def vin(n):
    return "5YJ3E1EA7KF%06d" % n


class RegistryTestCase(vkharness.ServerTestCase):
    """One vkeyd per test; `self.op` calls as operator OPERATOR."""

    def setUp(self):
        super().setUp()
        self.start()

    def start(self):
        self.vkeyd = self.start_vkeyd()
        self.issuer = vkcreds.Ed25519Key.load(
            os.path.join(self.workdir, "vkeyd-data", "identity-issuer.key"))
        self.channel = grpc.insecure_channel(self.vkeyd.target)
        self.stub = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.op_token = vkcreds.mint_token(self.issuer, OPERATOR, "operator")
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

    def tearDown(self):
        self.channel.close()
        super().tearDown()

    def call(self, method, token=None, **fields):
        """Calls RegistryService.<method> with an operator token (or
        `token`; "" sends none). Returns the response."""
        req_type = getattr(registry_pb2, method + "Request")
        token = self.op_token if token is None else token
        md = vkcreds.bearer(token) if token else None
        return getattr(self.stub, method)(
            req_type(**fields), metadata=md, timeout=RPC_TIMEOUT)

    def assert_code(self, code, method, token=None, **fields):
        with self.assertRaises(grpc.RpcError) as cm:
            self.call(method, token=token, **fields)
        self.assertEqual(cm.exception.code(), code,
                         cm.exception.details())
        return cm.exception.details()

    def register_vehicle(self, v, **extra):
        fields = dict(vin=v, public_key=os.urandom(32), model="Model 3")
        fields.update(extra)
        return self.call("RegisterVehicle", **fields).vehicle

    def audit(self, vin="", page_size=0):
        """Every audit entry of `vin` (or vk:audit), newest first, following
        the page tokens."""
        entries, token = [], ""
        while True:
            page = common_pb2.PageRequest(page_size=page_size,
                                          page_token=token)
            resp = self.call("ListAudit", vin=vin, page=page)
            entries += resp.entries
            token = resp.next_page_token
            if not token:
                return entries

    def list_all(self, method, field, page_size):
        pages, token = [], ""
        while True:
            page = common_pb2.PageRequest(page_size=page_size,
                                          page_token=token)
            resp = self.call(method, page=page)
            pages.append(list(getattr(resp, field)))
            token = resp.next_page_token
            if not token:
                return pages
            self.assertLess(len(pages), 20, "pagination does not end")


class VehiclesAndUsers(RegistryTestCase):

    def test_register_get_list_vehicles(self):
        keys = {}
        for v in reversed(VINS):  # insertion order must not matter
            keys[v] = os.urandom(32)
            got = self.register_vehicle(
                v, public_key=keys[v], attributes={"color": "red",
                                                   "trim": "long range"})
            self.assertEqual(got.vin, v)
            self.assertEqual(got.status, ACTIVE)
            self.assertEqual(got.owner_user_id, "")
            self.assertGreater(got.created_at, 1_600_000_000)
        got = self.call("GetVehicle", vin=VINS[3]).vehicle
        self.assertEqual(got.public_key, keys[VINS[3]])
        self.assertEqual(got.model, "Model 3")
        self.assertEqual(dict(got.attributes),
                         {"color": "red", "trim": "long range"})

        pages = self.list_all("ListVehicles", "vehicles", 3)
        self.assertEqual([len(p) for p in pages], [3, 3, 1])
        self.assertEqual([x.vin for p in pages for x in p], sorted(VINS))
        self.assertEqual(pages[2][0].public_key, keys[sorted(VINS)[6]])
        # Default page size (50) takes them all at once.
        resp = self.call("ListVehicles")
        self.assertEqual(len(resp.vehicles), 7)
        self.assertEqual(resp.next_page_token, "")
        # An exact multiple: the last page has no token.
        pages = self.list_all("ListVehicles", "vehicles", 7)
        self.assertEqual([len(p) for p in pages], [7])

        self.assert_code(grpc.StatusCode.NOT_FOUND, "GetVehicle",
                         vin=vin(99))
        detail = self.assert_code(grpc.StatusCode.ALREADY_EXISTS,
                                  "RegisterVehicle", vin=VINS[0],
                                  public_key=os.urandom(32))
        self.assertIn(VINS[0], detail)
        # The refusal did not touch the first registration.
        self.assertEqual(self.call("GetVehicle", vin=VINS[0]).vehicle
                         .public_key, keys[VINS[0]])
        for bad in ("zz", "abc", "3132"):  # not hex / not a VIN
            self.assert_code(grpc.StatusCode.INVALID_ARGUMENT,
                             "ListVehicles",
                             page=common_pb2.PageRequest(page_token=bad))

    def test_register_get_list_users(self):
        ids = ["user.%d@example.com" % i for i in range(7)]
        for uid in ids:
            u = self.call("RegisterUser", user_id=uid,
                          display_name="Zoë " + uid).user
            self.assertEqual(u.status, ACTIVE)
        got = self.call("GetUser", user_id=ids[2]).user
        self.assertEqual(got.display_name, "Zoë " + ids[2])
        self.assertEqual(got.user_id, ids[2])
        pages = self.list_all("ListUsers", "users", 3)
        self.assertEqual([len(p) for p in pages], [3, 3, 1])
        self.assertEqual([u.user_id for p in pages for u in p], sorted(ids))
        self.assert_code(grpc.StatusCode.ALREADY_EXISTS, "RegisterUser",
                         user_id=ids[0])
        self.assert_code(grpc.StatusCode.NOT_FOUND, "GetUser",
                         user_id="nobody")
        # User operations are audited in the global stream.
        entries = self.audit()
        regs = [e for e in entries if e.operation == "RegisterUser"]
        self.assertEqual([e.result for e in regs],
                         ["ALREADY_EXISTS"] + ["ok"] * 7)
        self.assertTrue(all(e.actor == "operator:" + OPERATOR for e in regs))

    def test_idempotent_retries(self):
        v = vin(1)
        pub = os.urandom(32)
        first = self.call("RegisterVehicle", request_id="req-1", vin=v,
                          public_key=pub, model="X")
        time.sleep(1.1)  # a second run would stamp another created_at
        again = self.call("RegisterVehicle", request_id="req-1", vin=v,
                          public_key=pub, model="X")
        self.assertEqual(again.SerializeToString(),
                         first.SerializeToString())
        # Another request id is another request: the VIN is taken.
        self.assert_code(grpc.StatusCode.ALREADY_EXISTS, "RegisterVehicle",
                         request_id="req-2", vin=v, public_key=pub)
        ops = [(e.operation, e.result) for e in self.audit(v)]
        self.assertEqual(ops, [("RegisterVehicle", "ALREADY_EXISTS"),
                               ("RegisterVehicle", "ok")])

        self.call("RegisterUser", request_id="u-1", user_id="bob")
        self.call("RegisterUser", request_id="u-1", user_id="bob")
        first = self.call("SetVehicleOwner", request_id="own-1", vin=v,
                          user_id="bob")
        again = self.call("SetVehicleOwner", request_id="own-1", vin=v,
                          user_id="bob")
        self.assertEqual(again, first)
        first = self.call("SetUserStatus", request_id="st-1", user_id="bob",
                          status=DISABLED)
        self.call("SetUserStatus", request_id="st-2", user_id="bob",
                  status=ACTIVE)
        # A retry returns the first answer and changes nothing.
        again = self.call("SetUserStatus", request_id="st-1", user_id="bob",
                          status=DISABLED)
        self.assertEqual(again, first)
        self.assertEqual(self.call("GetUser", user_id="bob").user.status,
                         ACTIVE)
        ops = [e.operation for e in self.audit()]
        self.assertEqual(ops, ["SetUserStatus", "SetUserStatus",
                               "RegisterUser"])
        ops = [e.operation for e in self.audit(v)]
        self.assertEqual(ops.count("SetVehicleOwner"), 1)

    def test_invalid_arguments(self):
        good = dict(vin=vin(2), public_key=os.urandom(32), model="M")
        bad_cases = [
            dict(vin="5YJ3E1EA7KF00000I"),  # I, O, Q are not VIN letters
            dict(vin="5YJ3E1EA7KF00000O"),
            dict(vin="5YJ3E1EA7KF00000Q"),
            dict(vin="5YJ3E1EA7KF00000"),  # 16 characters
            dict(vin="5yj3e1ea7kf000001"),
            dict(vin=""),
            dict(public_key=os.urandom(31)),
            dict(public_key=os.urandom(33)),
            dict(public_key=b""),
            dict(model="m" * 65),
            dict(model="tab\there"),
            dict(attributes={"k%d" % i: "v" for i in range(33)}),
            dict(attributes={"k" * 65: "v"}),
            dict(attributes={"k": "v" * 257}),
            dict(attributes={"": "v"}),
            dict(request_id="has space"),
            dict(request_id="r" * 65),
        ]
        for case in bad_cases:
            fields = dict(good)
            fields.update(case)
            with self.subTest(case=str(case)[:60]):
                self.assert_code(grpc.StatusCode.INVALID_ARGUMENT,
                                 "RegisterVehicle", **fields)
        # The limits themselves are fine.
        edge = dict(good, model="m" * 64,
                    attributes={("k%02d" % i) * 16: "é" * 128
                                for i in range(32)})
        self.assertEqual(len(self.call("RegisterVehicle", **edge)
                             .vehicle.attributes), 32)
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "RegisterUser",
                         user_id="bad user")
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "RegisterUser",
                         user_id="u", display_name="x" * 129)
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "GetVehicle",
                         vin="SHORT")
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "SetVehicleStatus",
                         vin=vin(2),
                         status=registry_pb2.ENTITY_STATUS_UNSPECIFIED)
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "SetVehicleStatus",
                         vin=vin(2), status=7)
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "SetVehicleOwner",
                         vin=vin(2), user_id="")
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "ListAudit",
                         vin="nope")
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "ListAudit",
                         page=common_pb2.PageRequest(page_token="x-1"))
        # Nothing was half-written, and the refusals are in the trail.
        self.assertEqual(len(self.call("ListVehicles").vehicles), 1)
        refused = [e for e in self.audit()
                   if e.result == "INVALID_ARGUMENT"]
        self.assertEqual(len(refused), len(bad_cases) + 5)  # reads: none
        self.assertTrue(all(e.actor == "operator:" + OPERATOR
                            for e in refused))


class Credentials(RegistryTestCase):

    def test_operator_credential_required(self):
        U = grpc.StatusCode.UNAUTHENTICATED
        self.assert_code(U, "ListVehicles", token="")
        self.assert_code(U, "RegisterVehicle", token="",
                         vin=vin(3), public_key=os.urandom(32))
        expired = vkcreds.mint_token(self.issuer, OPERATOR, "operator",
                                     lifetime=600,
                                     now=int(time.time()) - 3600)
        self.assert_code(U, "ListVehicles", token=expired)
        foreign = vkcreds.Ed25519Key()
        self.assert_code(U, "ListVehicles", token=vkcreds.mint_token(
            foreign, OPERATOR, "operator"))
        # Signed by a foreign key but naming the trusted issuer.
        now = int(time.time())
        claims = identity_pb2.IdentityClaims(
            subject=OPERATOR, role=identity_pb2.ROLE_OPERATOR, issued_at=now,
            expires_at=now + 600,
            issuer_key_id=self.issuer.key_id).SerializeToString()
        forged = (vkcreds.b64url(claims) + "." + vkcreds.b64url(
            foreign.sign(vkcreds.IDENTITY_CONTEXT + claims)))
        self.assert_code(U, "ListVehicles", token=forged)
        self.assert_code(U, "ListVehicles", token="not-a-token")
        user = vkcreds.mint_token(self.issuer, "bob", "user")
        self.assert_code(grpc.StatusCode.PERMISSION_DENIED, "RegisterVehicle",
                         token=user, vin=vin(3), public_key=os.urandom(32))
        self.assert_code(grpc.StatusCode.PERMISSION_DENIED, "ListAudit",
                         token=user)
        # None of it registered anything.
        self.assertEqual(len(self.call("ListVehicles").vehicles), 0)
        self.assertEqual(len(self.audit(vin(3))), 0)


class OwnershipStatusAudit(RegistryTestCase):

    def keys_available(self):
        stub = keys_pb2_grpc.KeyServiceStub(self.channel)
        try:
            stub.GetIssuerKeys(keys_pb2.GetIssuerKeysRequest(),
                               timeout=RPC_TIMEOUT)
            return stub
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise

    def test_owner_bind_transfer_and_status(self):
        v = vin(4)
        self.register_vehicle(v)
        for uid in ("alice", "bob", "carol"):
            self.call("RegisterUser", user_id=uid)
        self.assert_code(grpc.StatusCode.NOT_FOUND, "SetVehicleOwner",
                         vin=v, user_id="mallory")
        self.assert_code(grpc.StatusCode.NOT_FOUND, "SetVehicleOwner",
                         vin=vin(5), user_id="alice")
        resp = self.call("SetVehicleOwner", vin=v, user_id="alice")
        self.assertEqual(resp.vehicle.owner_user_id, "alice")
        self.assertEqual(resp.keys_revoked, 0)
        self.assertEqual(self.call("GetVehicle", vin=v).vehicle.owner_user_id,
                         "alice")
        # The same owner again changes nothing.
        resp = self.call("SetVehicleOwner", vin=v, user_id="alice")
        self.assertEqual(resp.vehicle.owner_user_id, "alice")
        self.assertEqual(resp.keys_revoked, 0)

        # A disabled user cannot become an owner; enabled again, they can.
        u = self.call("SetUserStatus", user_id="carol", status=DISABLED).user
        self.assertEqual(u.status, DISABLED)
        self.assertEqual(self.call("GetUser", user_id="carol").user.status,
                         DISABLED)
        self.assert_code(grpc.StatusCode.FAILED_PRECONDITION,
                         "SetVehicleOwner", vin=v, user_id="carol")
        self.call("SetUserStatus", user_id="carol", status=ACTIVE)

        # Transfer; with KeyService present, the first owner's key dies.
        keys = self.keys_available()
        key_id = self.apply_owner_key(keys, v, "alice") if keys else None
        resp = self.call("SetVehicleOwner", vin=v, user_id="bob")
        self.assertEqual(resp.vehicle.owner_user_id, "bob")
        self.assertEqual(resp.keys_revoked, 1 if keys else 0)
        if keys:
            got = keys.GetKey(keys_pb2.GetKeyRequest(key_id=key_id),
                              metadata=vkcreds.bearer(self.op_token),
                              timeout=RPC_TIMEOUT).key
            self.assertEqual(got.status, common_pb2.KEY_STATUS_REVOKED)
        else:
            print("KeyService not available: transfer tested without keys")

        # Disabling the vehicle shows in every read, owner kept.
        got = self.call("SetVehicleStatus", vin=v, status=DISABLED).vehicle
        self.assertEqual((got.status, got.owner_user_id), (DISABLED, "bob"))
        got = self.call("GetVehicle", vin=v).vehicle
        self.assertEqual((got.status, got.owner_user_id), (DISABLED, "bob"))
        listed = self.call("ListVehicles").vehicles
        self.assertEqual([(x.vin, x.status) for x in listed], [(v, DISABLED)])
        self.assert_code(grpc.StatusCode.NOT_FOUND, "SetVehicleStatus",
                         vin=vin(5), status=DISABLED)

        entries = self.audit(v)
        self.assertTrue(all(e.vin == v for e in entries))
        # KeyService's entries share the stream (the owner applied a key).
        applied = [e for e in entries if e.operation == "ApplyKey"]
        self.assertEqual([(e.actor, e.key_id) for e in applied],
                         [("user:alice", key_id)] if keys else [])
        entries = [e for e in entries if e.operation != "ApplyKey"]
        self.assertTrue(all(e.actor == "operator:" + OPERATOR
                            for e in entries))
        self.assertTrue(all(e.at_ms > 1_600_000_000_000 for e in entries))
        summary = [(e.operation, e.result) for e in entries
                   if not e.key_id]
        self.assertEqual(summary, [
            ("SetVehicleStatus", "ok"),
            ("SetVehicleOwner", "ok"),
            ("SetVehicleOwner", "FAILED_PRECONDITION"),
            ("SetVehicleOwner", "ok"),
            ("SetVehicleOwner", "ok"),
            ("SetVehicleOwner", "NOT_FOUND"),
            ("RegisterVehicle", "ok"),
        ])
        transfer = [e for e in entries if e.operation == "SetVehicleOwner"
                    and e.result == "ok"][0]
        self.assertIn("alice", transfer.detail)
        self.assertIn("bob", transfer.detail)
        revoked = [e for e in entries if e.key_id]
        self.assertEqual([e.key_id for e in revoked],
                         [key_id] if keys else [])
        # Refusals about a VIN that is not registered go to vk:audit.
        globl = self.audit()
        self.assertTrue(any(e.operation == "SetVehicleStatus" and
                            e.result == "NOT_FOUND" and vin(5) in e.detail
                            for e in globl))
        # Pages of 2 give the same entries in the same order.
        self.assertEqual([e.id for e in self.audit(v, page_size=2)],
                         [e.id for e in self.audit(v)])

    def apply_owner_key(self, keys, v, owner):
        phone = vkcreds.Ed25519Key()
        token = vkcreds.mint_token(self.issuer, owner, "user")
        resp = keys.ApplyKey(keys_pb2.ApplyKeyRequest(
            request_id="own-key", key_type=common_pb2.KEY_TYPE_OWNER,
            user_id=owner, vin=v,
            holder_key_algorithm=common_pb2.KEY_ALGORITHM_ED25519,
            holder_public_key=phone.public),
            metadata=vkcreds.bearer(token), timeout=RPC_TIMEOUT)
        self.assertEqual(resp.key.status, common_pb2.KEY_STATUS_ACTIVE)
        return resp.key.claims.key_id


class Restart(RegistryTestCase):

    def test_data_survives_kill_9(self):
        pub = os.urandom(32)
        self.register_vehicle(vin(6), public_key=pub,
                              attributes={"plate": "VK-1"})
        self.call("RegisterUser", user_id="dave", display_name="Dave")
        self.call("SetVehicleOwner", request_id="o", vin=vin(6),
                  user_id="dave")
        self.channel.close()
        self.vkeyd.kill()  # SIGKILL: no drain, no clean Redis shutdown
        self.start()  # same --data-dir, so the same AOF
        got = self.call("GetVehicle", vin=vin(6)).vehicle
        self.assertEqual((got.public_key, got.owner_user_id,
                          dict(got.attributes)), (pub, "dave",
                                                  {"plate": "VK-1"}))
        self.assertEqual(self.call("GetUser", user_id="dave").user
                         .display_name, "Dave")
        self.assertEqual([x.vin for x in self.call("ListVehicles").vehicles],
                         [vin(6)])
        ops = [e.operation for e in self.audit(vin(6))]
        self.assertEqual(ops, ["SetVehicleOwner", "RegisterVehicle"])
        # The idempotency record survived too.
        resp = self.call("SetVehicleOwner", request_id="o", vin=vin(6),
                         user_id="dave")
        self.assertEqual(resp.vehicle.owner_user_id, "dave")
        self.assertEqual(len(self.audit(vin(6))), 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
