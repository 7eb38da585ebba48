"""vkey.v1.AuthorizationService end to end: authorizing another person with
function authorization codes (seed 001).

A real vkeyd (two on one redis-server for the concurrent redeem), the grpcio
client, RegistryService for users and vehicles, VehicleService for the
vehicle's policy and its channel, VerifyService for what the keys open.
Every refusal is checked for its status and message; nothing asserts on
timing (the expiry test waits for the wall clock to pass a second).
"""

import base64
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import time
import unittest

import vkharness  # noqa: F401  (first: grafts the generated stubs)

import grpc

import vkcreds
from vkey.v1 import authorization_pb2 as A
from vkey.v1 import authorization_pb2_grpc
from vkey.v1 import common_pb2 as C
from vkey.v1 import keys_pb2 as K
from vkey.v1 import keys_pb2_grpc
from vkey.v1 import registry_pb2 as R
from vkey.v1 import registry_pb2_grpc
from vkey.v1 import vehicle_pb2 as V
from vkey.v1 import vehicle_pb2_grpc
from vkey.v1 import verify_pb2 as VF
from vkey.v1 import verify_pb2_grpc
from test_vkeyctl import VKEYCTL, VkeyctlMixin

Code = grpc.StatusCode
RPC_TIMEOUT = 15.0
VIN1 = "WVWZZZ1JZXW400001"
VIN2 = "WVWZZZ1JZXW400002"
UNLOCK = C.VEHICLE_FUNCTION_UNLOCK
LOCK = C.VEHICLE_FUNCTION_LOCK
DRIVE = C.VEHICLE_FUNCTION_DRIVE
TRUNK = C.VEHICLE_FUNCTION_TRUNK
USERS = ("alice", "bob", "carol", "dave")


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_code_set(text):
    """The printable code set -> (SignedCodeSet, CodeSet)."""
    assert text.startswith("vkc1."), text
    signed = A.SignedCodeSet.FromString(b64url_decode(text[5:]))
    return signed, A.CodeSet.FromString(signed.code_set)


def printable(signed):
    return "vkc1." + b64url(signed.SerializeToString())


class Stubs:
    """The stubs of one vkeyd and credentials minted by its issuer."""

    def __init__(self, case, vkeyd, issuer):
        self.channel = grpc.insecure_channel(vkeyd.target)
        case.addCleanup(self.channel.close)
        self.issuer = issuer
        self.auth = authorization_pb2_grpc.AuthorizationServiceStub(
            self.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.vehicle = vehicle_pb2_grpc.VehicleServiceStub(self.channel)
        self.verify = verify_pb2_grpc.VerifyServiceStub(self.channel)


class AuthCase(vkharness.ServerTestCase):
    """A vkeyd on its own Redis, users alice (owner of VIN1), bob, carol and
    dave, and helpers for every step of the flow."""

    def setUp(self):
        super().setUp()
        self.vkeyd = self.start_vkeyd()
        self.data_dir = os.path.join(self.workdir, "vkeyd-data")
        issuer = vkcreds.Ed25519Key.load(
            os.path.join(self.data_dir, "identity-issuer.key"))
        self.s = Stubs(self, self.vkeyd, issuer)
        self.op_md = vkcreds.bearer(
            vkcreds.mint_token(issuer, "ops", "operator"))
        for uid in USERS:
            self.s.registry.RegisterUser(R.RegisterUserRequest(user_id=uid),
                                         metadata=self.op_md,
                                         timeout=RPC_TIMEOUT)
        self.vehicle_keys = {}
        for vin in (VIN1, VIN2):
            self.vehicle_keys[vin] = vkcreds.Ed25519Key()
            self.s.registry.RegisterVehicle(
                R.RegisterVehicleRequest(
                    vin=vin, public_key=self.vehicle_keys[vin].public,
                    model="test"),
                metadata=self.op_md, timeout=RPC_TIMEOUT)
            self.s.registry.SetVehicleOwner(
                R.SetVehicleOwnerRequest(vin=vin, user_id="alice"),
                metadata=self.op_md, timeout=RPC_TIMEOUT)
        self.phones = {u: vkcreds.Ed25519Key() for u in USERS}

    # --- helpers ------------------------------------------------------------

    def md(self, user):
        return vkcreds.bearer(vkcreds.mint_token(self.s.issuer, user))

    def set_policy(self, vin=VIN1, **fields):
        """The vehicle reports its key policy (S260)."""
        self.s.vehicle.ReportManagementInfo(
            V.ReportManagementInfoRequest(vin=vin,
                                          policy=V.KeyPolicy(**fields)),
            metadata=vkcreds.vehicle_metadata(
                self.vehicle_keys[vin], vin,
                "/vkey.v1.VehicleService/ReportManagementInfo"),
            timeout=RPC_TIMEOUT)

    def authorize(self, caller="alice", vin=VIN1, functions=(UNLOCK, TRUNK),
                  key_type=C.KEY_TYPE_SHARED, hours=2, stubs=None, **fields):
        if hours and "validity" not in fields:
            fields["validity"] = C.Validity(
                not_after=int(time.time()) + int(hours * 3600))
        req = A.AuthorizeRequest(vin=vin, functions=list(functions),
                                 key_type=key_type, **fields)
        return (stubs or self.s).auth.Authorize(
            req, metadata=self.md(caller), timeout=RPC_TIMEOUT)

    def redeem(self, code_set, caller="bob", stubs=None, request_id=""):
        phone = self.phones[caller]
        return (stubs or self.s).auth.Redeem(
            A.RedeemRequest(request_id=request_id, code_set=code_set,
                            holder_key_algorithm=C.KEY_ALGORITHM_ED25519,
                            holder_public_key=phone.public),
            metadata=self.md(caller), timeout=RPC_TIMEOUT)

    def grants(self, caller="alice", vin=VIN1, status=0, page_size=0):
        md = self.op_md if caller is None else self.md(caller)
        out, token = [], ""
        for _ in range(100):
            resp = self.s.auth.ListGrants(
                A.ListGrantsRequest(vin=vin, status=status,
                                    page=C.PageRequest(page_size=page_size,
                                                       page_token=token)),
                metadata=md, timeout=RPC_TIMEOUT)
            out += resp.grants
            token = resp.next_page_token
            if not token:
                return out
        self.fail("pagination does not end")

    def cancel(self, grant_id, caller="alice", request_id=""):
        return self.s.auth.CancelGrant(
            A.CancelGrantRequest(grant_id=grant_id, request_id=request_id),
            metadata=self.md(caller), timeout=RPC_TIMEOUT)

    def revoke(self, grant_id, caller="alice", request_id=""):
        return self.s.auth.RevokeGrant(
            A.RevokeGrantRequest(grant_id=grant_id, request_id=request_id),
            metadata=self.md(caller), timeout=RPC_TIMEOUT)

    def refused(self, code, fn, *args, contains=None, **kw):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args, **kw)
        err = cm.exception
        self.assertEqual(err.code(), code, err.details())
        if contains:
            self.assertIn(contains, err.details())
        return err.details()

    def issuer_public(self, kid):
        resp = self.s.keys.GetIssuerKeys(K.GetIssuerKeysRequest(),
                                         timeout=RPC_TIMEOUT)
        return {k.key_id: k.public_key for k in resp.keys}[kid]

    def verify(self, record, holder, function):
        """VerifyKey with an operator token and the holder phone's proof."""
        challenge = os.urandom(32)
        ts = int(time.time() * 1000)
        sig = self.phones[holder].sign(
            vkcreds.proof_message(challenge, record.claims.vin, function, ts))
        item = VF.VerifyKeyItem(key=record.key, function=function,
                                challenge=challenge, timestamp_ms=ts,
                                phone_signature=sig)
        return self.s.verify.VerifyKey(
            VF.VerifyKeyRequest(vin=record.claims.vin, item=item),
            metadata=self.op_md, timeout=RPC_TIMEOUT).result

    def channel_events(self, n, vin=VIN1):
        """The first n events of the vehicle's channel."""
        md = vkcreds.vehicle_metadata(self.vehicle_keys[vin], vin,
                                      "/vkey.v1.VehicleService/OpenChannel")
        call = self.s.vehicle.OpenChannel(V.OpenChannelRequest(vin=vin),
                                          metadata=md, timeout=RPC_TIMEOUT)
        events = []
        for ev in call:
            events.append(ev)
            if len(events) == n:
                break
        call.cancel()
        return events

    def audit(self, vin=VIN1):
        return list(self.s.registry.ListAudit(
            R.ListAuditRequest(vin=vin, page=C.PageRequest(page_size=500)),
            metadata=self.op_md, timeout=RPC_TIMEOUT).entries)

    def key_status(self, key_id):
        return self.s.keys.GetKey(K.GetKeyRequest(key_id=key_id),
                                  metadata=self.op_md,
                                  timeout=RPC_TIMEOUT).key.status


class FlowTest(AuthCase):

    def test_unlock_and_trunk_for_two_hours_end_to_end(self):
        before = int(time.time())
        auth = self.authorize(functions=(UNLOCK, TRUNK), hours=2,
                              request_id="share-1")
        signed, cs = parse_code_set(auth.code_set)
        self.assertEqual(signed, auth.signed_code_set)
        self.assertEqual(list(cs.functions), [UNLOCK, TRUNK])
        self.assertEqual((cs.vin, cs.key_type, cs.share_depth, cs.format),
                         (VIN1, C.KEY_TYPE_SHARED, 0, 1))
        self.assertTrue(cs.grant_id.startswith(VIN1 + "."))
        # Expires in 24 h by default; the keys last two hours.
        self.assertAlmostEqual(cs.expires_at, before + 86400, delta=30)
        self.assertAlmostEqual(cs.validity.not_after, before + 7200, delta=30)
        self.assertLess(len(auth.code_set), 400)  # fits a QR code
        self.assertEqual(auth.grant.status, A.GRANT_STATUS_OUTSTANDING)
        self.assertEqual(auth.grant.granted_by, "alice")
        pub = self.issuer_public(cs.issuer_key_id)
        from cryptography.hazmat.primitives.asymmetric import ed25519
        ed25519.Ed25519PublicKey.from_public_bytes(pub).verify(
            signed.signature, b"vkey-codeset-v1\0" + signed.code_set)

        # A retried Authorize returns the same code set, no second grant.
        again = self.authorize(functions=(UNLOCK, TRUNK), hours=2,
                               request_id="share-1")
        self.assertEqual(again.code_set, auth.code_set)
        self.assertEqual(len(self.grants()), 1)

        # Bob's phone redeems it: one key per function, for his phone.
        red = self.redeem(auth.code_set, "bob")
        self.assertEqual(len(red.keys), 2)
        fns = []
        for rec in red.keys:
            c = rec.claims
            self.assertEqual(C.KeyClaims.FromString(rec.key.claims), c)
            self.assertTrue(vkcreds.verify_signed_key(rec.key, pub))
            self.assertEqual((c.vin, c.holder_user_id, c.key_type,
                              c.grant_id, c.holder_public_key),
                             (VIN1, "bob", C.KEY_TYPE_SHARED, cs.grant_id,
                              self.phones["bob"].public))
            self.assertEqual(c.validity.not_after, cs.validity.not_after)
            self.assertEqual(len(c.functions), 1)
            fns.append(c.functions[0])
        self.assertEqual(fns, [UNLOCK, TRUNK])
        unlock_key, trunk_key = red.keys
        self.assertEqual(red.grant.status, A.GRANT_STATUS_REDEEMED)
        self.assertEqual(red.grant.redeemed_by, "bob")
        self.assertEqual([(k.key_id, k.function) for k in red.grant.keys],
                         [(unlock_key.claims.key_id, UNLOCK),
                          (trunk_key.claims.key_id, TRUNK)])

        # The recipient holds exactly those keys ...
        held = self.s.keys.ListKeys(K.ListKeysRequest(user_id="bob"),
                                    metadata=self.md("bob"),
                                    timeout=RPC_TIMEOUT).keys
        self.assertEqual(sorted((k.claims.key_id, list(k.claims.functions))
                                for k in held),
                         sorted((k.claims.key_id, list(k.claims.functions))
                                for k in red.keys))
        # ... and so does the vehicle, through its channel.
        events = self.channel_events(2)
        self.assertEqual([(e.seq, e.type, e.key_id) for e in events],
                         [(1, V.KEY_EVENT_TYPE_ISSUED,
                           unlock_key.claims.key_id),
                          (2, V.KEY_EVENT_TYPE_ISSUED,
                           trunk_key.claims.key_id)])
        for ev, rec in zip(events, red.keys):
            self.assertEqual(ev.key, rec.key)

        # Unlock is allowed; start (DRIVE) is not, with either key.
        res = self.verify(unlock_key, "bob", UNLOCK)
        self.assertEqual(res.decision, VF.DECISION_ALLOW, res)
        self.assertEqual(self.verify(trunk_key, "bob", TRUNK).decision,
                         VF.DECISION_ALLOW)
        for rec in (unlock_key, trunk_key):
            res = self.verify(rec, "bob", DRIVE)
            self.assertEqual((res.decision, res.reason),
                             (VF.DECISION_DENY,
                              VF.DENY_REASON_FUNCTION_NOT_PERMITTED), res)
        # Another phone cannot use Bob's keys.
        res = self.verify(unlock_key, "carol", UNLOCK)
        self.assertEqual(res.reason, VF.DENY_REASON_BAD_PROOF)

        # The owner sees the grant and the keys issued from it.
        [g] = self.grants()
        self.assertEqual((g.grant_id, g.status, g.redeemed_by),
                         (cs.grant_id, A.GRANT_STATUS_REDEEMED, "bob"))
        self.assertEqual([(k.function, k.status) for k in g.keys],
                         [(UNLOCK, C.KEY_STATUS_ACTIVE),
                          (TRUNK, C.KEY_STATUS_ACTIVE)])
        ops = [(e.operation, e.key_id, e.result) for e in self.audit()]
        self.assertIn(("Authorize", "", "ok"), ops)
        self.assertIn(("Redeem", unlock_key.claims.key_id, "ok"), ops)
        self.assertIn(("Redeem", trunk_key.claims.key_id, "ok"), ops)

    def test_redeem_retry_with_request_id_returns_the_same_keys(self):
        auth = self.authorize()
        first = self.redeem(auth.code_set, "bob", request_id="r1")
        again = self.redeem(auth.code_set, "bob", request_id="r1")
        self.assertEqual(first, again)
        self.assertEqual(len(self.s.keys.ListKeys(
            K.ListKeysRequest(vin=VIN1), metadata=self.md("alice"),
            timeout=RPC_TIMEOUT).keys), 2)

    def test_one_time_and_temporary_code_sets(self):
        auth = self.authorize(key_type=C.KEY_TYPE_ONE_TIME,
                              functions=(UNLOCK,), hours=0)
        [rec] = self.redeem(auth.code_set, "bob").keys
        self.assertEqual((rec.claims.key_type, rec.claims.max_uses),
                         (C.KEY_TYPE_ONE_TIME, 1))
        self.assertEqual(self.verify(rec, "bob", UNLOCK).decision,
                         VF.DECISION_ALLOW)
        self.assertEqual(self.verify(rec, "bob", UNLOCK).reason,
                         VF.DENY_REASON_USES_EXHAUSTED)
        self.refused(Code.INVALID_ARGUMENT, self.authorize,
                     key_type=C.KEY_TYPE_TEMPORARY, hours=0,
                     contains="temporary key needs validity.not_after")
        auth = self.authorize(key_type=C.KEY_TYPE_TEMPORARY, hours=1,
                              max_uses=5)
        recs = self.redeem(auth.code_set, "carol").keys
        self.assertEqual([r.claims.max_uses for r in recs], [5, 5])

    def test_policy_max_keys_counts_a_grant_once(self):
        self.set_policy(max_keys=[V.FunctionLimit(key_type=C.KEY_TYPE_SHARED,
                                                  max_keys=1)])
        first = self.authorize(functions=(UNLOCK, LOCK, TRUNK))
        self.assertEqual(len(self.redeem(first.code_set, "bob").keys), 3)
        self.refused(Code.RESOURCE_EXHAUSTED, self.authorize,
                     contains="at most 1 keys")


class RefusalTest(AuthCase):

    def test_tampered_code_set(self):
        auth = self.authorize(functions=(UNLOCK,))
        signed, cs = parse_code_set(auth.code_set)
        # Granting DRIVE on a code set made for UNLOCK: the bytes change.
        cs.functions.append(DRIVE)
        forged = A.SignedCodeSet(code_set=cs.SerializeToString(),
                                 signature=signed.signature)
        self.refused(Code.PERMISSION_DENIED, self.redeem, printable(forged),
                     contains="code set signature does not verify")
        # A flipped signature bit.
        sig = bytearray(signed.signature)
        sig[5] ^= 1
        bad = A.SignedCodeSet(code_set=signed.code_set, signature=bytes(sig))
        self.refused(Code.PERMISSION_DENIED, self.redeem, printable(bad),
                     contains="code set signature does not verify")
        # Signed by a key the service does not know.
        other = vkcreds.Ed25519Key()
        cs2 = A.CodeSet()
        cs2.CopyFrom(cs)
        cs2.issuer_key_id = other.key_id
        body = cs2.SerializeToString()
        alien = A.SignedCodeSet(
            code_set=body, signature=other.sign(b"vkey-codeset-v1\0" + body))
        self.refused(Code.PERMISSION_DENIED, self.redeem, printable(alien),
                     contains="signed by a key this service does not know")
        # Not the printable form at all.
        for text in ("", "vkc1.", "vkc2." + auth.code_set[5:],
                     auth.code_set[:-3] + "!!!", auth.code_set + "=",
                     "vkc1." + b64url(b"\xff\xfe garbage")):
            self.refused(Code.INVALID_ARGUMENT, self.redeem, text,
                         contains="code_set")
        # The genuine one still works, once.
        self.assertEqual(len(self.redeem(auth.code_set).keys), 1)
        # Refused before the vehicle is known to exist: the global trail.
        entries = [e for e in self.audit("") if e.operation == "Redeem"
                   and e.result == "PERMISSION_DENIED"]
        self.assertTrue(any(cs.grant_id in e.detail for e in entries))

    def test_expired_code_set(self):
        auth = self.authorize(code_set_ttl_seconds=1)
        _, cs = parse_code_set(auth.code_set)
        while time.time() < cs.expires_at + 0.2:
            time.sleep(0.1)
        self.refused(Code.FAILED_PRECONDITION, self.redeem, auth.code_set,
                     contains="code set expired")
        [g] = self.grants()
        self.assertEqual(g.status, A.GRANT_STATUS_EXPIRED)
        self.assertEqual(
            self.grants(status=A.GRANT_STATUS_EXPIRED)[0].grant_id,
            cs.grant_id)
        self.assertEqual(self.grants(status=A.GRANT_STATUS_OUTSTANDING), [])

    def test_code_set_lifetime_is_capped_by_the_policy(self):
        self.set_policy(max_code_set_ttl_seconds=60)
        now = int(time.time())
        _, cs = parse_code_set(
            self.authorize(code_set_ttl_seconds=3600).code_set)
        self.assertLessEqual(cs.expires_at, now + 62)
        _, cs = parse_code_set(self.authorize().code_set)
        self.assertLessEqual(cs.expires_at, now + 62)
        self.refused(Code.INVALID_ARGUMENT, self.authorize,
                     code_set_ttl_seconds=31 * 86400, contains="30 days")

    def test_redeemed_twice(self):
        auth = self.authorize()
        self.redeem(auth.code_set, "bob")
        for who in ("bob", "carol"):
            self.refused(Code.FAILED_PRECONDITION, self.redeem, auth.code_set,
                         who, contains="code set already redeemed")
        self.assertEqual(len(self.s.keys.ListKeys(
            K.ListKeysRequest(vin=VIN1), metadata=self.md("alice"),
            timeout=RPC_TIMEOUT).keys), 2)

    def test_cancelled_code_set(self):
        auth = self.authorize()
        gid = auth.grant.grant_id
        self.refused(Code.PERMISSION_DENIED, self.cancel, gid, "bob",
                     contains="owner or the grant's author")
        resp = self.cancel(gid, request_id="c1")
        self.assertEqual(resp.grant.status, A.GRANT_STATUS_CANCELLED)
        self.assertEqual(self.cancel(gid, request_id="c1"), resp)
        self.refused(Code.FAILED_PRECONDITION, self.cancel, gid,
                     contains="already cancelled")
        self.refused(Code.FAILED_PRECONDITION, self.redeem, auth.code_set,
                     contains="code set was cancelled")
        self.refused(Code.FAILED_PRECONDITION, self.revoke, gid,
                     contains="the grant is cancelled")
        # A redeemed code set is revoked, not cancelled.
        other = self.authorize()
        self.redeem(other.code_set)
        self.refused(Code.FAILED_PRECONDITION, self.cancel,
                     other.grant.grant_id, contains="revoke the grant")
        self.refused(Code.NOT_FOUND, self.cancel, VIN1 + ".0123456789abcdef",
                     contains="no such grant")
        self.refused(Code.INVALID_ARGUMENT, self.cancel, "nope",
                     contains="grant_id")
        self.assertIn(("CancelGrant", "ok"),
                      [(e.operation, e.result) for e in self.audit()])

    def test_wrong_recipient(self):
        auth = self.authorize(recipient_user_id="bob")
        _, cs = parse_code_set(auth.code_set)
        self.assertEqual(cs.recipient_user_id, "bob")
        self.refused(Code.PERMISSION_DENIED, self.redeem, auth.code_set,
                     "carol", contains="this code set is for another user")
        self.assertEqual(self.redeem(auth.code_set, "bob").keys[0]
                         .claims.holder_user_id, "bob")
        self.refused(Code.NOT_FOUND, self.authorize,
                     recipient_user_id="nobody", contains="recipient_user_id")

    def test_functions_beyond_the_policy(self):
        self.set_policy(grantable_functions=[UNLOCK, LOCK])
        self.refused(Code.PERMISSION_DENIED, self.authorize,
                     functions=(UNLOCK, TRUNK),
                     contains="does not let these functions be granted")
        ok = self.authorize(functions=(UNLOCK, LOCK))
        # The vehicle tightens its policy before the code set is redeemed.
        self.set_policy(grantable_functions=[LOCK])
        self.refused(Code.FAILED_PRECONDITION, self.redeem, ok.code_set,
                     contains="no longer lets these functions be granted")
        entries = [(e.operation, e.result) for e in self.audit()]
        self.assertIn(("Authorize", "PERMISSION_DENIED"), entries)
        self.assertIn(("Redeem", "FAILED_PRECONDITION"), entries)

    def test_non_owner_authorizing(self):
        self.refused(Code.PERMISSION_DENIED, self.authorize, "dave",
                     contains="only the vehicle's owner")
        self.refused(Code.PERMISSION_DENIED, self.s.auth.Authorize,
                     A.AuthorizeRequest(vin=VIN1, functions=[UNLOCK],
                                        key_type=C.KEY_TYPE_SHARED),
                     metadata=self.op_md, timeout=RPC_TIMEOUT)
        self.refused(Code.UNAUTHENTICATED, self.s.auth.Authorize,
                     A.AuthorizeRequest(vin=VIN1, functions=[UNLOCK],
                                        key_type=C.KEY_TYPE_SHARED),
                     timeout=RPC_TIMEOUT)
        self.refused(Code.NOT_FOUND, self.authorize,
                     vin="WVWZZZ1JZXW499999", contains="not registered")
        for kw, text in (({"functions": ()}, "at least one function"),
                         ({"key_type": C.KEY_TYPE_OWNER}, "key_type"),
                         ({"functions": (UNLOCK, UNLOCK)}, "twice"),
                         ({"functions": (99,)}, "unknown"),
                         ({"vin": "short"}, "vin"),
                         ({"key_type": C.KEY_TYPE_ONE_TIME, "max_uses": 3,
                           "hours": 0}, "exactly one use")):
            self.refused(Code.INVALID_ARGUMENT, self.authorize, **kw,
                         contains=text)
        self.assertIn(("Authorize", "user:dave", "PERMISSION_DENIED"),
                      [(e.operation, e.actor, e.result) for e in self.audit()])


class SharingOnTest(AuthCase):
    """Bob holds shared keys from Alice; can he share them on?"""

    def setUp(self):
        super().setUp()
        auth = self.authorize(functions=(UNLOCK, TRUNK), hours=4)
        self.bob_grant = auth.grant.grant_id
        self.bob_keys = self.redeem(auth.code_set, "bob").keys

    def test_resharing_not_allowed_by_default(self):
        self.refused(Code.PERMISSION_DENIED, self.authorize, "bob",
                     functions=(UNLOCK,), hours=1,
                     contains="does not let shared keys be shared on")
        self.set_policy(sharing_allowed=True, max_share_depth=0)
        self.refused(Code.PERMISSION_DENIED, self.authorize, "bob",
                     functions=(UNLOCK,), hours=1,
                     contains="allows sharing on to depth 0")

    def test_resharing_to_a_bounded_depth_and_revocation_cascades(self):
        self.set_policy(sharing_allowed=True, max_share_depth=1)
        # Only functions Bob's keys have, for no longer than they last.
        self.refused(Code.PERMISSION_DENIED, self.authorize, "bob",
                     functions=(UNLOCK, DRIVE), hours=1,
                     contains="only functions your own shared keys have")
        self.refused(Code.PERMISSION_DENIED, self.authorize, "bob",
                     functions=(UNLOCK,), hours=8,
                     contains="cannot outlive your own")
        auth = self.authorize("bob", functions=(UNLOCK,), hours=1)
        _, cs = parse_code_set(auth.code_set)
        self.assertEqual(cs.share_depth, 1)
        self.assertEqual(list(auth.grant.parent_grant_ids), [self.bob_grant])
        [carol_key] = self.redeem(auth.code_set, "carol").keys
        self.assertEqual(self.verify(carol_key, "carol", UNLOCK).decision,
                         VF.DECISION_ALLOW)
        # Carol is at depth 1: she may not share on.
        self.refused(Code.PERMISSION_DENIED, self.authorize, "carol",
                     functions=(UNLOCK,), hours=1,
                     contains="this code set would have depth 2")
        # Bob lists the grants he made; Alice sees all of them.
        self.assertEqual([g.grant_id for g in self.grants("bob")],
                         [cs.grant_id])
        self.assertEqual(len(self.grants("alice")), 2)
        self.assertEqual(len(self.grants(None)), 2)  # an operator
        # Carol cannot revoke Bob's grant; Bob can revoke his own.
        self.refused(Code.PERMISSION_DENIED, self.revoke, self.bob_grant,
                     "carol")
        # Alice revokes Bob's grant: Carol's keys go with it.
        resp = self.revoke(self.bob_grant, request_id="rv1")
        self.assertEqual((resp.keys_revoked, resp.grants_revoked), (3, 2))
        self.assertEqual(resp.grant.status, A.GRANT_STATUS_REVOKED)
        self.assertEqual(self.revoke(self.bob_grant, request_id="rv1"), resp)
        for rec in list(self.bob_keys) + [carol_key]:
            self.assertEqual(self.key_status(rec.claims.key_id),
                             C.KEY_STATUS_REVOKED)
        self.assertEqual(self.verify(carol_key, "carol", UNLOCK).reason,
                         VF.DENY_REASON_REVOKED)
        self.assertEqual(self.verify(self.bob_keys[0], "bob", UNLOCK).reason,
                         VF.DENY_REASON_REVOKED)
        self.assertEqual({g.status for g in self.grants()},
                         {A.GRANT_STATUS_REVOKED})
        # The vehicle is told: 3 ISSUED, then 3 REVOKED.
        events = self.channel_events(6)
        self.assertEqual([e.type for e in events],
                         [V.KEY_EVENT_TYPE_ISSUED] * 3
                         + [V.KEY_EVENT_TYPE_REVOKED] * 3)
        self.assertEqual({e.key_id for e in events[3:]},
                         {k.claims.key_id for k in self.bob_keys}
                         | {carol_key.claims.key_id})
        self.assertEqual([e.seq for e in events], list(range(1, 7)))
        self.refused(Code.FAILED_PRECONDITION, self.revoke, self.bob_grant,
                     contains="already revoked")
        revokes = [e for e in self.audit() if e.operation == "RevokeGrant"
                   and e.result == "ok"]
        self.assertEqual(len(revokes), 5)  # two grants, three keys

    def test_outstanding_shared_on_code_set_dies_with_its_parent(self):
        self.set_policy(sharing_allowed=True, max_share_depth=2)
        auth = self.authorize("bob", functions=(TRUNK,), hours=1)
        self.refused(Code.PERMISSION_DENIED, self.revoke, self.bob_grant,
                     "bob", contains="owner or the grant's author")
        resp = self.revoke(self.bob_grant)
        self.assertEqual((resp.keys_revoked, resp.grants_revoked), (2, 2))
        self.refused(Code.FAILED_PRECONDITION, self.redeem, auth.code_set,
                     "carol", contains="code set was revoked")


class ListTest(AuthCase):

    def test_pages_and_filters(self):
        ids = [self.authorize().grant.grant_id for _ in range(5)]
        lock = self.authorize(functions=(LOCK,))
        self.redeem(lock.code_set)
        got = self.grants(page_size=2)
        self.assertEqual(len(got), 6)
        self.assertEqual({g.grant_id for g in got},
                         set(ids) | {lock.grant.grant_id})
        self.assertEqual(got, self.grants(page_size=500))
        self.assertEqual(len(self.grants(status=A.GRANT_STATUS_REDEEMED)), 1)
        self.assertEqual(len(self.grants(
            status=A.GRANT_STATUS_OUTSTANDING)), 5)
        self.assertEqual(self.grants("dave"), [])
        self.refused(Code.NOT_FOUND, self.grants, vin="WVWZZZ1JZXW499999")
        self.refused(Code.INVALID_ARGUMENT, self.s.auth.ListGrants,
                     A.ListGrantsRequest(vin=VIN1, page=C.PageRequest(
                         page_token="bogus")),
                     metadata=self.md("alice"), timeout=RPC_TIMEOUT)


def readme_blocks(marker):
    """The ```sh blocks of README.md between <!-- marker:begin/end -->."""
    with open(os.path.join(vkharness.SOURCE_DIR, "README.md")) as f:
        text = f.read()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin not in text or end not in text:
        raise AssertionError(f"README.md has no {marker} section")
    section = text[text.index(begin):text.index(end)]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


class VkeyctlSharingTest(VkeyctlMixin, vkharness.ServerTestCase):
    """The sharing flow through deploy/vkeyctl, as the README shows it."""

    def setUp(self):
        super().setUp()
        self.vkeyd = self.start_vkeyd()

    def test_readme_sharing_section_works_as_written(self):
        # The README's commands, typed from a checkout: ./deploy/vkeyctl,
        # HOME for ~/.vkey, and the server and data dir of this vkeyd in
        # the environment instead of ./deploy/run.sh's defaults.
        os.symlink(os.path.dirname(os.path.abspath(VKEYCTL)),
                   self.path("deploy"))
        script = "set -e\n" + "".join(readme_blocks("quickstart")
                                      + readme_blocks("sharing"))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("VKEY_")}
        env.update(HOME=self.workdir, VKEY_SERVER=self.vkeyd.target,
                   VKEY_DATA_DIR=self.path("vkeyd-data"),
                   VKEY_PYTHON_STUBS=os.path.abspath(vkharness.GEN_PYTHON))
        r = subprocess.run(["bash", "-c", script], cwd=self.workdir, env=env,
                           text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=600, check=False)
        self.assertEqual(r.returncode, 0, f"{r.stdout}\n{r.stderr}")
        out = r.stdout
        self.assertIn("vkeyctl: FAILED_PRECONDITION: code set already "
                      "redeemed", r.stderr)
        self.assertIn("refused (exit 1)", out)
        # Bob's phone store holds the two keys, one function each.
        with open(self.path(".vkey/phone-bob.json")) as f:
            bob = json.load(f)["keys"]
        self.assertEqual(sorted(k["functions"] for k in bob.values()),
                         [["trunk"], ["unlock"]])
        # The car got them, then their revocation, each once and in order.
        issued = re.findall(r"^seq (\d+) ISSUED (\S+)", out, re.M)
        revoked = re.findall(r"^seq (\d+) REVOKED (\S+)", out, re.M)
        self.assertTrue(set(bob) <= {k for _, k in issued}, out)
        self.assertTrue(set(bob) <= {k for _, k in revoked}, out)
        with open(self.path(".vkey/car.json")) as f:
            car = json.load(f)["keys"]
        self.assertEqual({car[k]["status"] for k in bob}, {"revoked"})
        for op in ("Authorize", "Redeem", "CancelGrant", "RevokeGrant"):
            self.assertRegex(out, rf"user:\w+  {op}  ")

    def test_authorize_redeem_grants_and_errors(self):
        srv = self.vkeyd
        self.ctl("register-user", "alice", server=srv)
        self.ctl("register-user", "bob", server=srv)
        self.ctl("vehicle-keygen", "--out", self.path("car.key"), server=srv)
        self.ctl("register-vehicle", "WVWZZZ1JZXW000009", "--vehicle-key",
                 self.path("car.key"), server=srv)
        self.ctl("set-owner", "WVWZZZ1JZXW000009", "alice", server=srv)
        self.ctl("phone-keygen", "--p256", "--out", self.path("bob.pem"),
                 server=srv)
        vin = "WVWZZZ1JZXW000009"
        r = self.ctl("authorize", vin, "--as", "alice", "--functions",
                     "unlock,trunk", "--hours", "2", "--type", "temporary",
                     "--uses", "3", "--qr", "never", server=srv)
        code_set = r.stdout.strip()
        self.assertTrue(code_set.startswith("vkc1."), r.stdout)
        self.assertEqual(len(code_set.splitlines()), 1)
        self.assertIn("temporary keys for unlock,trunk", r.stderr)
        if shutil.which("qrencode"):
            r = self.ctl("authorize", vin, "--as", "alice", "--functions",
                         "lock", "--qr", "always", server=srv)
            self.assertIn("\u2588", r.stderr)  # qrencode's ANSIUTF8 blocks
        r = self.ctl("redeem", code_set, "--as", "bob", "--phone-key",
                     self.path("bob.pem"), server=srv)
        key_ids = r.stdout.split()
        self.assertEqual(len(key_ids), 2)
        store = self.path(".vkey/phone-bob.json")
        self.assertPrivate(store)
        with open(store) as f:
            keys = json.load(f)["keys"]
        self.assertEqual(sorted(keys), sorted(key_ids))
        self.assertEqual({k["max_uses"] for k in keys.values()}, {3})
        r = self.ctl("redeem", code_set, "--as", "bob", "--phone-key",
                     self.path("bob.pem"), server=srv, check=False)
        self.assertOneLineError(r, 1, "FAILED_PRECONDITION",
                                "code set already redeemed")
        r = self.ctl("redeem", code_set[:-4] + "AAAA", "--as", "bob",
                     "--phone-key", self.path("bob.pem"), server=srv,
                     check=False)
        self.assertOneLineError(r, 1, "PERMISSION_DENIED")
        r = self.ctl("authorize", vin, "--as", "bob", "--functions",
                     "unlock", server=srv, check=False)
        self.assertOneLineError(r, 1, "PERMISSION_DENIED")
        r = self.ctl("authorize", vin, "--as", "alice", "--functions",
                     "fly", server=srv, check=False)
        self.assertOneLineError(r, 1, "unknown function 'fly'")
        grants = self.ctl_json("grants", vin, "--as", "alice", server=srv)
        self.assertEqual(len(grants), 2)
        r = self.ctl("grants", vin, "--as", "alice", "--status", "redeemed",
                     server=srv)
        self.assertEqual(r.stdout.count("  key "), 2)
        self.assertIn("redeemed_by=bob", r.stdout)
        r = self.ctl("revoke-grant", code_set, "--as", "alice", server=srv)
        self.assertIn("2 key(s) and 1 grant(s) revoked", r.stderr)
        self.assertIn("  revoked  temporary  functions=unlock,trunk",
                      r.stdout)
        self.assertEqual(r.stdout.count("  revoked\n"), 2)  # the keys
        outstanding = self.ctl_json("grants", vin, "--status",
                                    "outstanding", server=srv)
        self.assertEqual(len(outstanding), 1)
        self.ctl("cancel-grant", outstanding[0]["grant_id"], "--as", "alice",
                 server=srv)
        r = self.ctl("cancel-grant", outstanding[0]["grant_id"], "--as",
                     "alice", server=srv, check=False)
        self.assertOneLineError(r, 1, "FAILED_PRECONDITION",
                                "already cancelled")


class TwoInstanceTest(vkharness.ServerTestCase):
    """Two vkeyd on one Redis, sharing the signing and identity keys:
    concurrent redeems of one code set on both, exactly one wins."""

    def setUp(self):
        super().setUp()
        self.redis, url = self.start_redis()
        self.a = self.start_vkeyd(redis_url=url, name="a")
        data_a = os.path.join(self.workdir, "a-data")
        issuer = vkcreds.Ed25519Key.load(
            os.path.join(data_a, "identity-issuer.key"))
        pub_path = os.path.join(self.workdir, "issuer.pub")
        with open(pub_path, "w") as f:
            f.write(issuer.public.hex() + "\n")
        self.b = self.start_vkeyd(
            "--signing-key", os.path.join(data_a, "signing.key"),
            "--identity-issuer-pub", pub_path, redis_url=url, name="b")
        self.sa = Stubs(self, self.a, issuer)
        self.sb = Stubs(self, self.b, issuer)
        op = vkcreds.bearer(vkcreds.mint_token(issuer, "ops", "operator"))
        for uid in ("alice", "bob", "carol"):
            self.sa.registry.RegisterUser(R.RegisterUserRequest(user_id=uid),
                                          metadata=op, timeout=RPC_TIMEOUT)
        self.sa.registry.RegisterVehicle(
            R.RegisterVehicleRequest(vin=VIN1,
                                     public_key=vkcreds.Ed25519Key().public),
            metadata=op, timeout=RPC_TIMEOUT)
        self.sa.registry.SetVehicleOwner(
            R.SetVehicleOwnerRequest(vin=VIN1, user_id="alice"),
            metadata=op, timeout=RPC_TIMEOUT)
        self.issuer = issuer

    def md(self, user):
        return vkcreds.bearer(vkcreds.mint_token(self.issuer, user))

    def test_concurrent_redeems_on_two_instances(self):
        phone = vkcreds.Ed25519Key()
        for round_ in range(5):
            auth = self.sa.auth.Authorize(
                A.AuthorizeRequest(vin=VIN1, functions=[UNLOCK, TRUNK],
                                   key_type=C.KEY_TYPE_SHARED),
                metadata=self.md("alice"), timeout=RPC_TIMEOUT)

            def redeem(args):
                stubs, user = args
                try:
                    return stubs.auth.Redeem(
                        A.RedeemRequest(
                            code_set=auth.code_set,
                            holder_key_algorithm=C.KEY_ALGORITHM_ED25519,
                            holder_public_key=phone.public),
                        metadata=self.md(user), timeout=RPC_TIMEOUT)
                except grpc.RpcError as e:
                    return e

            calls = [(self.sa, "bob"), (self.sb, "carol"),
                     (self.sb, "bob"), (self.sa, "carol")]
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = list(pool.map(redeem, calls))
            wins = [r for r in results if isinstance(r, A.RedeemResponse)]
            self.assertEqual(len(wins), 1, results)
            for r in results:
                if not isinstance(r, A.RedeemResponse):
                    self.assertEqual(r.code(), Code.FAILED_PRECONDITION)
                    self.assertEqual(r.details(),
                                     "code set already redeemed")
        keys = self.sb.keys.ListKeys(K.ListKeysRequest(vin=VIN1),
                                     metadata=self.md("alice"),
                                     timeout=RPC_TIMEOUT).keys
        self.assertEqual(len(keys), 10)  # 5 rounds x 2 functions, no more
        grants = self.sb.auth.ListGrants(A.ListGrantsRequest(vin=VIN1),
                                         metadata=self.md("alice"),
                                         timeout=RPC_TIMEOUT).grants
        self.assertEqual({g.status for g in grants},
                         {A.GRANT_STATUS_REDEEMED})


if __name__ == "__main__":
    unittest.main()
