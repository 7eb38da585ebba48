"""VerifyService: the verification hot path, end to end.

A real vkeyd (and, where instances must share state, a real redis-server and
two vkeyd), a real grpcio client: every deny reason on purpose, phone proofs
in Ed25519 and P-256, batches, vehicle sessions (replay, resync, expiry),
revocation seen by another instance, one-time keys used concurrently on two
instances, and Redis down failing closed.
"""

import concurrent.futures
import os
import time
import unittest

import grpc
import vkharness
import vkcreds

from vkey.v1 import (common_pb2, keys_pb2, keys_pb2_grpc, registry_pb2,
                     registry_pb2_grpc, verify_pb2, verify_pb2_grpc)

VIN1 = "1HGCM82633A004352"
VIN2 = "5YJ3E1EA7KF317000"
F = common_pb2
R = verify_pb2


class Fleet:
    """Users, vehicles and keys made through the public API of one vkeyd."""

    def __init__(self, case, vkeyd, data_dir):
        self.case = case
        self.channel = grpc.insecure_channel(vkeyd.target)
        case.addCleanup(self.channel.close)
        self.issuer = vkcreds.Ed25519Key.load(
            os.path.join(data_dir, "identity-issuer.key"))
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        self.verify = verify_pb2_grpc.VerifyServiceStub(self.channel)
        self.op_md = vkcreds.bearer(
            vkcreds.mint_token(self.issuer, "ops", role="operator"))
        self.vehicle_keys = {}

    def user_md(self, user):
        return vkcreds.bearer(vkcreds.mint_token(self.issuer, user))

    def setup(self):
        for user in ("alice", "bob"):
            self.registry.RegisterUser(
                registry_pb2.RegisterUserRequest(user_id=user),
                metadata=self.op_md, timeout=10)
        for vin in (VIN1, VIN2):
            vk = vkcreds.Ed25519Key()
            self.vehicle_keys[vin] = vk
            self.registry.RegisterVehicle(
                registry_pb2.RegisterVehicleRequest(
                    vin=vin, public_key=vk.public, model="test"),
                metadata=self.op_md, timeout=10)
            self.registry.SetVehicleOwner(
                registry_pb2.SetVehicleOwnerRequest(vin=vin, user_id="alice"),
                metadata=self.op_md, timeout=10)
        issuers = self.keys.GetIssuerKeys(keys_pb2.GetIssuerKeysRequest(),
                                          timeout=10)
        self.issuer_public = issuers.keys[0].public_key

    def apply(self, phone, vin=VIN1, key_type=F.KEY_TYPE_OWNER, functions=(),
              validity=None, max_uses=0):
        alg = (F.KEY_ALGORITHM_ECDSA_P256 if isinstance(phone, vkcreds.P256Key)
               else F.KEY_ALGORITHM_ED25519)
        req = keys_pb2.ApplyKeyRequest(
            key_type=key_type, user_id="alice", vin=vin,
            holder_key_algorithm=alg, holder_public_key=phone.public,
            functions=list(functions), max_uses=max_uses)
        if validity:
            req.validity.CopyFrom(validity)
        return self.keys.ApplyKey(req, metadata=self.user_md("alice"),
                                  timeout=10).key

    def manage(self, key_id, op):
        return self.keys.ManageKey(
            keys_pb2.ManageKeyRequest(key_id=key_id, operation=op),
            metadata=self.user_md("alice"), timeout=10).key


def item(record, phone, function=F.VEHICLE_FUNCTION_UNLOCK, vin=VIN1,
         challenge=None, timestamp_ms=None, raw=False):
    challenge = os.urandom(32) if challenge is None else challenge
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    msg = vkcreds.proof_message(challenge, vin, function, ts)
    sig = phone.sign(msg, raw=True) if raw else phone.sign(msg)
    return R.VerifyKeyItem(key=record.key, function=function,
                           challenge=challenge, timestamp_ms=ts,
                           phone_signature=sig)


class VerifyTest(vkharness.ServerTestCase):

    def setUp(self):
        super().setUp()
        self.vkeyd = self.start_vkeyd()
        self.fleet = Fleet(self, self.vkeyd,
                           os.path.join(self.workdir, "vkeyd-data"))
        self.fleet.setup()
        self.phone = vkcreds.Ed25519Key()
        self.owner_key = self.fleet.apply(self.phone)

    def verify(self, it, vin=VIN1, stub=None, md=None):
        stub = stub or self.fleet.verify
        return stub.VerifyKey(R.VerifyKeyRequest(vin=vin, item=it),
                              metadata=md or self.fleet.op_md,
                              timeout=10).result

    def assertDenied(self, result, reason):
        self.assertEqual(result.decision, R.DECISION_DENY, result)
        self.assertEqual(R.DenyReason.Name(result.reason),
                         R.DenyReason.Name(reason), result.detail)

    def test_allow_ed25519(self):
        res = self.verify(item(self.owner_key, self.phone))
        self.assertEqual(res.decision, R.DECISION_ALLOW, res)
        self.assertEqual(res.key_id, self.owner_key.claims.key_id)
        # The second time the token's signature comes from the cache; the
        # answer must not change.
        res = self.verify(item(self.owner_key, self.phone))
        self.assertEqual(res.decision, R.DECISION_ALLOW, res)

    def test_allow_p256_der_and_raw(self):
        phone = vkcreds.P256Key()
        rec = self.fleet.apply(phone)
        self.assertEqual(self.verify(item(rec, phone)).decision,
                         R.DECISION_ALLOW)
        self.assertEqual(self.verify(item(rec, phone, raw=True)).decision,
                         R.DECISION_ALLOW)

    def test_each_deny_reason(self):
        k = self.owner_key
        # Proofs.
        self.assertDenied(self.verify(item(k, vkcreds.Ed25519Key())),
                          R.DENY_REASON_BAD_PROOF)
        self.assertDenied(
            self.verify(item(k, self.phone,
                             timestamp_ms=int(time.time() * 1000) - 120000)),
            R.DENY_REASON_STALE_PROOF)
        challenge = os.urandom(32)
        self.assertEqual(self.verify(item(k, self.phone,
                                          challenge=challenge)).decision,
                         R.DECISION_ALLOW)
        self.assertDenied(self.verify(item(k, self.phone,
                                           challenge=challenge)),
                          R.DENY_REASON_CHALLENGE_REUSED)
        # The token.
        self.assertDenied(self.verify(item(k, self.phone, vin=VIN2), vin=VIN2),
                          R.DENY_REASON_WRONG_VEHICLE)
        bad = R.VerifyKeyItem()
        bad.CopyFrom(item(k, self.phone))
        bad.key.claims = b"\xff\xff garbage"
        self.assertDenied(self.verify(bad), R.DENY_REASON_MALFORMED_KEY)
        tampered = R.VerifyKeyItem()
        tampered.CopyFrom(item(k, self.phone))
        sig = bytearray(tampered.key.signature)
        sig[0] ^= 1
        tampered.key.signature = bytes(sig)
        self.assertDenied(self.verify(tampered),
                          R.DENY_REASON_BAD_KEY_SIGNATURE)
        claims = common_pb2.KeyClaims.FromString(k.key.claims)
        claims.issuer_key_id = "0123456789abcdef"
        foreign = R.VerifyKeyItem()
        foreign.CopyFrom(item(k, self.phone))
        foreign.key.claims = claims.SerializeToString()
        self.assertDenied(self.verify(foreign), R.DENY_REASON_UNKNOWN_ISSUER)
        # Functions and validity.
        limited = self.fleet.apply(
            self.phone, key_type=F.KEY_TYPE_SHARED,
            functions=[F.VEHICLE_FUNCTION_UNLOCK, F.VEHICLE_FUNCTION_TRUNK])
        self.assertEqual(self.verify(item(limited, self.phone)).decision,
                         R.DECISION_ALLOW)
        self.assertDenied(
            self.verify(item(limited, self.phone,
                             function=F.VEHICLE_FUNCTION_DRIVE)),
            R.DENY_REASON_FUNCTION_NOT_PERMITTED)
        now = int(time.time())
        future = self.fleet.apply(
            self.phone, key_type=F.KEY_TYPE_TEMPORARY,
            validity=F.Validity(not_before=now + 3600, not_after=now + 7200))
        self.assertDenied(self.verify(item(future, self.phone)),
                          R.DENY_REASON_NOT_YET_VALID)
        short = self.fleet.apply(
            self.phone, key_type=F.KEY_TYPE_TEMPORARY,
            validity=F.Validity(not_after=now + 2))
        deadline = time.time() + 10
        while time.time() <= now + 3 and time.time() < deadline:
            time.sleep(0.2)
        self.assertDenied(self.verify(item(short, self.phone)),
                          R.DENY_REASON_EXPIRED)
        # Status.
        self.fleet.manage(limited.claims.key_id, keys_pb2.KEY_OPERATION_SUSPEND)
        self.assertDenied(self.verify(item(limited, self.phone)),
                          R.DENY_REASON_SUSPENDED)
        self.fleet.manage(limited.claims.key_id, keys_pb2.KEY_OPERATION_REVOKE)
        self.assertDenied(self.verify(item(limited, self.phone)),
                          R.DENY_REASON_REVOKED)
        # Uses.
        once = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_ONE_TIME)
        self.assertEqual(self.verify(item(once, self.phone)).decision,
                         R.DECISION_ALLOW)
        self.assertDenied(self.verify(item(once, self.phone)),
                          R.DENY_REASON_USES_EXHAUSTED)

    def test_outdated_and_deleted(self):
        rec = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_SHARED)
        req = keys_pb2.ManageKeyRequest(
            key_id=rec.claims.key_id,
            operation=keys_pb2.KEY_OPERATION_SET_FUNCTIONS,
            functions=[F.VEHICLE_FUNCTION_LOCK, F.VEHICLE_FUNCTION_UNLOCK])
        newer = self.fleet.keys.ManageKey(
            req, metadata=self.fleet.user_md("alice"), timeout=10).key
        self.assertDenied(self.verify(item(rec, self.phone)),
                          R.DENY_REASON_OUTDATED_KEY)
        self.assertEqual(self.verify(item(newer, self.phone)).decision,
                         R.DECISION_ALLOW)
        self.fleet.manage(rec.claims.key_id, keys_pb2.KEY_OPERATION_DELETE)
        self.assertDenied(self.verify(item(newer, self.phone)),
                          R.DENY_REASON_DELETED)

    def test_batch_mixes_good_and_bad(self):
        k = self.owner_key
        items = [item(k, self.phone), item(k, vkcreds.Ed25519Key()),
                 item(k, self.phone, function=F.VEHICLE_FUNCTION_CLIMATE),
                 item(k, self.phone, vin=VIN2)]
        resp = self.fleet.verify.VerifyKeys(
            R.VerifyKeysRequest(vin=VIN1, items=items),
            metadata=self.fleet.op_md, timeout=10)
        got = [(r.decision, r.reason) for r in resp.results]
        self.assertEqual(got, [
            (R.DECISION_ALLOW, R.DENY_REASON_UNSPECIFIED),
            (R.DECISION_DENY, R.DENY_REASON_BAD_PROOF),
            (R.DECISION_ALLOW, R.DENY_REASON_UNSPECIFIED),
            (R.DECISION_DENY, R.DENY_REASON_BAD_PROOF),
        ])
        many = [item(k, self.phone) for _ in range(40)]
        resp = self.fleet.verify.VerifyKeys(
            R.VerifyKeysRequest(vin=VIN1, items=many),
            metadata=self.fleet.op_md, timeout=20)
        self.assertTrue(all(r.decision == R.DECISION_ALLOW
                            for r in resp.results))
        with self.assertRaises(grpc.RpcError) as cm:
            self.fleet.verify.VerifyKeys(
                R.VerifyKeysRequest(vin=VIN1, items=[item(k, self.phone)] * 65),
                metadata=self.fleet.op_md, timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_callers(self):
        it = item(self.owner_key, self.phone)
        req = R.VerifyKeyRequest(vin=VIN1, item=it)
        for md, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                         (self.fleet.user_md("alice"),
                          grpc.StatusCode.PERMISSION_DENIED)):
            with self.assertRaises(grpc.RpcError) as cm:
                self.fleet.verify.VerifyKey(req, metadata=md, timeout=10)
            self.assertEqual(cm.exception.code(), code)

    def session(self, vin=VIN1):
        s = vkcreds.VehicleSession(vin, self.fleet.vehicle_keys[vin])
        s.open(self.fleet.verify, verify_pb2, self.fleet.issuer_public)
        return s

    def session_verify(self, s, it, vin=VIN1, counter=None, expires=None):
        req = R.VerifyKeyRequest(vin=vin, item=it)
        md, tag = s.auth(verify_pb2, "/vkey.v1.VerifyService/VerifyKey", req,
                         counter=counter, expires_at_ms=expires)
        call = self.fleet.verify.VerifyKey.with_call(req, metadata=md,
                                                     timeout=10)
        return call[0].result, tag

    def test_session_verify_and_replay(self):
        s = self.session()
        res, _ = self.session_verify(s, item(self.owner_key, self.phone))
        self.assertEqual(res.decision, R.DECISION_ALLOW)
        # Replay the same counter: refused, with resync info bound to it.
        with self.assertRaises(grpc.RpcError) as cm:
            self.session_verify(s, item(self.owner_key, self.phone),
                                counter=s.counter)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("replayed", cm.exception.details())
        # A counter far behind the window.
        for _ in range(40):
            s.counter += 1
        res, _ = self.session_verify(s, item(self.owner_key, self.phone))
        self.assertEqual(res.decision, R.DECISION_ALLOW)
        req = R.VerifyKeyRequest(vin=VIN1,
                                 item=item(self.owner_key, self.phone))
        md, tag = s.auth(verify_pb2, "/vkey.v1.VerifyService/VerifyKey", req,
                         counter=1)
        with self.assertRaises(grpc.RpcError) as cm:
            self.fleet.verify.VerifyKey(req, metadata=md, timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        s.counter = 0  # the vehicle lost its counter
        info = s.resync(verify_pb2, cm.exception.trailing_metadata(), tag)
        self.assertIsNotNone(info, "no resync info in the trailers")
        self.assertGreaterEqual(info.counter, 41)
        res, _ = self.session_verify(s, item(self.owner_key, self.phone))
        self.assertEqual(res.decision, R.DECISION_ALLOW)

    def bound_item(self, s, index=0, counter=None, **kw):
        """An item whose challenge is bound to s's next call (or `counter`)."""
        n = s.counter + 1 if counter is None else counter
        return item(self.owner_key, self.phone,
                    challenge=vkcreds.bound_challenge(s.epoch, n, index, **kw))

    def session_verify_batch(self, s, items):
        req = R.VerifyKeysRequest(vin=VIN1, items=items)
        md, _ = s.auth(verify_pb2, "/vkey.v1.VerifyService/VerifyKeys", req)
        return self.fleet.verify.VerifyKeys(req, metadata=md,
                                            timeout=10).results

    def test_session_bound_challenges(self):
        s = self.session()
        spent = self.bound_item(s)
        res, _ = self.session_verify(s, spent)
        self.assertEqual(res.decision, R.DECISION_ALLOW, res.detail)
        # The vehicle's own bytes may follow the binding (up to 64 in all).
        res, _ = self.session_verify(s, self.bound_item(s, extra=b"x" * 22))
        self.assertEqual(res.decision, R.DECISION_ALLOW, res.detail)
        # The same proof in a later call: the challenge names a spent call.
        res, _ = self.session_verify(s, spent)
        self.assertDenied(res, R.DENY_REASON_CHALLENGE_MISMATCH)
        # A batch: each item's challenge names its own index.
        results = self.session_verify_batch(
            s, [self.bound_item(s, 0), self.bound_item(s, 0),
                self.bound_item(s, 2)])
        self.assertEqual([r.decision for r in results],
                         [R.DECISION_ALLOW, R.DECISION_DENY, R.DECISION_ALLOW])
        self.assertDenied(results[1], R.DENY_REASON_CHALLENGE_MISMATCH)
        # Bound to a counter ahead of the call's, or cut short.
        res, _ = self.session_verify(
            s, self.bound_item(s, counter=s.counter + 2))
        self.assertDenied(res, R.DENY_REASON_CHALLENGE_MISMATCH)
        short = vkcreds.bound_challenge(s.epoch, s.counter + 1, 0)[:30]
        res, _ = self.session_verify(
            s, item(self.owner_key, self.phone, challenge=short))
        self.assertDenied(res, R.DENY_REASON_CHALLENGE_MISMATCH)
        # A key with a use limit takes the commit script, which counts the
        # use and, for a bound challenge, records nothing.
        once = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_ONE_TIME)
        for want in (R.DECISION_ALLOW, R.DECISION_DENY):
            n = s.counter + 1
            res, _ = self.session_verify(s, item(
                once, self.phone,
                challenge=vkcreds.bound_challenge(s.epoch, n, 0)))
            self.assertEqual(res.decision, want, res.detail)
        self.assertDenied(res, R.DENY_REASON_USES_EXHAUSTED)
        # Outside a session there is no call to bind to.
        res = self.verify(self.bound_item(s))
        self.assertDenied(res, R.DENY_REASON_CHALLENGE_MISMATCH)
        self.assertIn("session", res.detail)
        # A session reopened: challenges bound to the old epoch are refused.
        old_counter = s.counter + 1
        old_epoch_item = self.bound_item(s)
        s.open(self.fleet.verify, verify_pb2, self.fleet.issuer_public)
        s.counter = max(s.counter, old_counter - 1)  # the same counter if can
        res, _ = self.session_verify(s, old_epoch_item)
        self.assertDenied(res, R.DENY_REASON_CHALLENGE_MISMATCH)

    def test_session_expired_request_and_bad_tag(self):
        s = self.session()
        past = int(time.time() * 1000) - 5000
        with self.assertRaises(grpc.RpcError) as cm:
            self.session_verify(s, item(self.owner_key, self.phone),
                                expires=past)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("expired", cm.exception.details())
        # A request tagged for another body does not verify.
        req = R.VerifyKeyRequest(vin=VIN1,
                                 item=item(self.owner_key, self.phone))
        md, _ = s.auth(verify_pb2, "/vkey.v1.VerifyService/VerifyKey",
                       R.VerifyKeyRequest(vin=VIN1))
        with self.assertRaises(grpc.RpcError) as cm:
            self.fleet.verify.VerifyKey(req, metadata=md, timeout=10)
        self.assertIn("tag", cm.exception.details())

    def test_vehicle_cannot_use_another_vehicles_session(self):
        s2 = self.session(VIN2)
        # VIN2's session cannot authenticate a call about VIN1 ...
        req = R.VerifyKeyRequest(vin=VIN1,
                                 item=item(self.owner_key, self.phone))
        md, _ = s2.auth(verify_pb2, "/vkey.v1.VerifyService/VerifyKey", req)
        with self.assertRaises(grpc.RpcError) as cm:
            self.fleet.verify.VerifyKey(req, metadata=md, timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        # ... and VIN1's key is refused inside VIN2's own session.
        res, _ = self.session_verify(
            s2, item(self.owner_key, self.phone, vin=VIN2), vin=VIN2)
        self.assertEqual(res.reason, R.DENY_REASON_WRONG_VEHICLE)

    def test_check_key_status_in_session(self):
        other = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_SHARED)
        s = self.session()
        ids = [self.owner_key.claims.key_id, other.claims.key_id,
               VIN1 + ".0000000000000000"]

        def check():
            req = R.CheckKeyStatusRequest(vin=VIN1, key_ids=ids)
            md, _ = s.auth(verify_pb2,
                           "/vkey.v1.VerifyService/CheckKeyStatus", req)
            return [k.status for k in self.fleet.verify.CheckKeyStatus(
                req, metadata=md, timeout=10).keys]

        self.assertEqual(check(), [F.KEY_STATUS_ACTIVE, F.KEY_STATUS_ACTIVE,
                                   F.KEY_STATUS_UNSPECIFIED])
        self.fleet.manage(other.claims.key_id, keys_pb2.KEY_OPERATION_REVOKE)
        self.assertEqual(check(), [F.KEY_STATUS_ACTIVE, F.KEY_STATUS_REVOKED,
                                   F.KEY_STATUS_UNSPECIFIED])

    def test_session_tag_covers_the_bytes_as_sent(self):
        # A newer vehicle may send a field this build does not know, in any
        # order: the tag is over the bytes, not a re-serialization.
        s = self.session()
        req = R.CheckKeyStatusRequest(vin=VIN1,
                                      key_ids=[self.owner_key.claims.key_id])
        body = b"\xf8\x06\x01" + req.SerializeToString()  # field 111 first
        md, _ = s.auth(verify_pb2, "/vkey.v1.VerifyService/CheckKeyStatus",
                       body)
        call = self.fleet.channel.unary_unary(
            "/vkey.v1.VerifyService/CheckKeyStatus",
            request_serializer=lambda b: b,
            response_deserializer=R.CheckKeyStatusResponse.FromString)
        resp = call(body, metadata=md, timeout=10)
        self.assertEqual([k.status for k in resp.keys],
                         [F.KEY_STATUS_ACTIVE])
        # The same bytes with one changed do not verify.
        tampered = b"\xf8\x06\x02" + req.SerializeToString()
        with self.assertRaises(grpc.RpcError) as cm:
            call(tampered, metadata=md, timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("tag", cm.exception.details())

    def test_garbage_fields(self):
        for req in (R.VerifyKeyRequest(vin="short"),
                    R.VerifyKeyRequest(vin=VIN1),
                    R.VerifyKeyRequest(vin=VIN1 + "X" * 10000)):
            with self.assertRaises(grpc.RpcError) as cm:
                self.fleet.verify.VerifyKey(req, metadata=self.fleet.op_md,
                                            timeout=10)
            self.assertEqual(cm.exception.code(),
                             grpc.StatusCode.INVALID_ARGUMENT)
        # Oversized challenge: a per-item deny, not a crash.
        res = self.verify(item(self.owner_key, self.phone,
                               challenge=b"x" * 500))
        self.assertEqual(res.decision, R.DECISION_DENY)


class RateLimitTest(vkharness.ServerTestCase):
    """Per-vehicle and per-caller limits: RESOURCE_EXHAUSTED + retry hint."""

    def run_until_limited(self, vin_of_item, count=40):
        vkeyd = self.vkeyd
        limited = None
        allowed = 0
        for i in range(count):
            vin = vin_of_item(i)
            rec = self.recs[vin]
            try:
                self.fleet.verify.VerifyKey(
                    R.VerifyKeyRequest(vin=vin,
                                       item=item(rec, self.phone, vin=vin)),
                    metadata=self.fleet.op_md, timeout=10)
                allowed += 1
            except grpc.RpcError as e:
                limited = e
                break
        self.assertIsNotNone(limited, f"{vkeyd.name}: never limited")
        self.assertEqual(limited.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        hint = dict(limited.trailing_metadata()).get("grpc-retry-pushback-ms")
        self.assertIsNotNone(hint, "no retry hint in the trailers")
        self.assertGreater(int(hint), 0)
        return allowed, limited

    def setup_fleet(self, *flags):
        self.vkeyd = self.start_vkeyd(*flags)
        self.fleet = Fleet(self, self.vkeyd,
                           os.path.join(self.workdir, "vkeyd-data"))
        self.fleet.setup()
        self.phone = vkcreds.Ed25519Key()
        self.recs = {vin: self.fleet.apply(self.phone, vin=vin)
                     for vin in (VIN1, VIN2)}

    def test_per_vehicle_limit(self):
        self.setup_fleet("--rate-vehicle", "3")
        allowed, e = self.run_until_limited(lambda i: VIN1)
        self.assertIn("vehicle", e.details())
        self.assertGreaterEqual(allowed, 3)  # the burst is let through
        # Another vehicle is not affected.
        res = self.fleet.verify.VerifyKey(
            R.VerifyKeyRequest(vin=VIN2,
                               item=item(self.recs[VIN2], self.phone,
                                         vin=VIN2)),
            metadata=self.fleet.op_md, timeout=10).result
        self.assertEqual(res.decision, R.DECISION_ALLOW)

    def test_per_caller_limit(self):
        self.setup_fleet("--rate-vehicle", "0", "--rate-caller", "3")
        _, e = self.run_until_limited(lambda i: (VIN1, VIN2)[i % 2])
        self.assertIn("caller", e.details())

    def test_limit_is_the_instances_across_loops(self):
        # Two loops share one limiter: a caller whose calls alternate
        # between connections on both gets the instance's burst (twice the
        # rate: 4), plus what refills meanwhile, not twice that.
        self.setup_fleet("--loops", "2", "--rate-vehicle", "0",
                         "--rate-caller", "2")
        other = grpc.insecure_channel(
            self.vkeyd.target, options=[("grpc.use_local_subchannel_pool", 1)])
        self.addCleanup(other.close)
        stubs = [self.fleet.verify, verify_pb2_grpc.VerifyServiceStub(other)]
        rec = self.recs[VIN1]
        start = time.monotonic()
        allowed = limited = 0
        for i in range(16):
            req = R.VerifyKeyRequest(vin=VIN1, item=item(rec, self.phone))
            try:
                stubs[i % 2].VerifyKey(req, metadata=self.fleet.op_md,
                                       timeout=10)
                allowed += 1
            except grpc.RpcError as e:
                self.assertEqual(e.code(),
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)
                limited += 1
        refilled = 2 * (time.monotonic() - start)
        self.assertGreater(limited, 0)
        self.assertLessEqual(allowed, 4 + int(refilled) + 1)


class TwoInstanceTest(vkharness.ServerTestCase):
    """Two vkeyd on one Redis, sharing the signing and issuer keys."""

    def setUp(self):
        super().setUp()
        self.redis, url = self.start_redis()
        self.a = self.start_vkeyd(redis_url=url, name="a")
        data_a = os.path.join(self.workdir, "a-data")
        self.b = self.start_vkeyd(
            "--signing-key", os.path.join(data_a, "signing.key"),
            "--identity-issuer-pub", self.issuer_pub_file(data_a),
            redis_url=url, name="b")
        self.fleet = Fleet(self, self.a, data_a)
        self.fleet.setup()
        self.chan_b = grpc.insecure_channel(self.b.target)
        self.addCleanup(self.chan_b.close)
        self.verify_b = verify_pb2_grpc.VerifyServiceStub(self.chan_b)
        self.phone = vkcreds.Ed25519Key()

    def issuer_pub_file(self, data_dir):
        key = vkcreds.Ed25519Key.load(
            os.path.join(data_dir, "identity-issuer.key"))
        path = os.path.join(self.workdir, "issuer.pub")
        with open(path, "w") as f:
            f.write(key.public.hex() + "\n")
        return path

    def verify_on(self, stub, rec):
        return stub.VerifyKey(R.VerifyKeyRequest(vin=VIN1,
                                                 item=item(rec, self.phone)),
                              metadata=self.fleet.op_md, timeout=10).result

    def test_revocation_through_a_is_refused_by_b(self):
        rec = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_SHARED)
        # B verifies (and caches the key's status) before the revoke.
        for _ in range(2):
            self.assertEqual(self.verify_on(self.verify_b, rec).decision,
                             R.DECISION_ALLOW)
        self.fleet.manage(rec.claims.key_id, keys_pb2.KEY_OPERATION_REVOKE)
        acked = time.monotonic()
        # B may answer from its cache until A's notification reaches it (the
        # design bound is VK_FEED_FRESH_MS, 100 ms); poll without assuming
        # a time, then report it.
        while True:
            res = self.verify_on(self.verify_b, rec)
            if res.decision != R.DECISION_ALLOW:
                break
            self.assertLess(time.monotonic() - acked, 5,
                            "B still allows a key revoked through A")
        delay_ms = (time.monotonic() - acked) * 1000
        self.assertEqual(res.reason, R.DENY_REASON_REVOKED)
        print(f"\nrevocation through A refused by B {delay_ms:.1f} ms after "
              f"the revoke's acknowledgement")

    def status_on_b(self, session, key_id):
        req = R.CheckKeyStatusRequest(vin=VIN1, key_ids=[key_id])
        md, _ = session.auth(verify_pb2,
                             "/vkey.v1.VerifyService/CheckKeyStatus", req)
        return self.verify_b.CheckKeyStatus(req, metadata=md,
                                            timeout=10).keys[0].status

    def session_on_b(self):
        s = vkcreds.VehicleSession(VIN1, self.fleet.vehicle_keys[VIN1])
        s.open(self.verify_b, verify_pb2, self.fleet.issuer_public)
        return s

    def check_on(self, stub, session, key_id, counter=None):
        """CheckKeyStatus in `session`; returns (status, trailers, tag)."""
        req = R.CheckKeyStatusRequest(vin=VIN1, key_ids=[key_id])
        md, tag = session.auth(verify_pb2,
                               "/vkey.v1.VerifyService/CheckKeyStatus", req,
                               counter=counter)
        try:
            resp = stub.CheckKeyStatus(req, metadata=md, timeout=10)
            return resp.keys[0].status, None, tag
        except grpc.RpcError as e:
            self.assertEqual(e.code(), grpc.StatusCode.UNAUTHENTICATED,
                             e.details())
            return None, e, tag

    def test_session_moves_between_instances_without_replays(self):
        key_id = self.fleet.apply(self.phone,
                                  key_type=F.KEY_TYPE_SHARED).claims.key_id
        s = vkcreds.VehicleSession(VIN1, self.fleet.vehicle_keys[VIN1])
        s.open(self.fleet.verify, verify_pb2, self.fleet.issuer_public)
        on_a = []
        for _ in range(20):  # A leases counters ahead of the vehicle
            status, err, _ = self.check_on(self.fleet.verify, s, key_id)
            self.assertIsNone(err)
            self.assertEqual(status, F.KEY_STATUS_ACTIVE)
            on_a.append(s.counter)
        # Every counter A accepted is refused by B, whatever B leased.
        for c in (on_a[0], on_a[-1]):
            status, err, _ = self.check_on(self.verify_b, s, key_id,
                                           counter=c)
            self.assertIsNotNone(err, f"B accepted counter {c} used on A")
        # The vehicle moves to B: at most one refusal, which resynchronises.
        status, err, tag = self.check_on(self.verify_b, s, key_id)
        if err is not None:
            info = s.resync(verify_pb2, err.trailing_metadata(), tag)
            self.assertIsNotNone(info, "refused without resync info")
            self.assertGreaterEqual(info.counter, on_a[-1])
            status, err, _ = self.check_on(self.verify_b, s, key_id)
        self.assertIsNone(err)
        self.assertEqual(status, F.KEY_STATUS_ACTIVE)
        on_b = s.counter
        # ... and back to A, which must not accept B's counter either.
        status, err, _ = self.check_on(self.fleet.verify, s, key_id,
                                       counter=on_b)
        self.assertIsNotNone(err, "A accepted a counter used on B")
        # A session reopened through B ends the old one on A too.
        old = vkcreds.VehicleSession(VIN1, self.fleet.vehicle_keys[VIN1])
        old.__dict__.update(s.__dict__)
        s.open(self.verify_b, verify_pb2, self.fleet.issuer_public)
        deadline = time.monotonic() + 5
        while True:
            status, err, _ = self.check_on(self.fleet.verify, old, key_id)
            if err is not None:
                break
            self.assertLess(time.monotonic(), deadline,
                            "A still accepts a replaced session")
        self.assertIn("open a new session", err.details())
        status, err, _ = self.check_on(self.fleet.verify, s, key_id)
        self.assertIsNone(err)

    def verify_bound_on_a(self, s, rec):
        """Verifies `rec` through A in session s, with a challenge bound to
        the call; checks it is allowed. Returns the request, metadata and
        challenge."""
        bound = vkcreds.bound_challenge(s.epoch, s.counter + 1, 0)
        req = R.VerifyKeyRequest(vin=VIN1, item=item(rec, self.phone,
                                                     challenge=bound))
        md, _ = s.auth(verify_pb2, "/vkey.v1.VerifyService/VerifyKey", req)
        res = self.fleet.verify.VerifyKey(req, metadata=md, timeout=10).result
        self.assertEqual(res.decision, R.DECISION_ALLOW, res.detail)
        return req, md, bound

    def test_bound_challenge_is_spent_by_its_call_alone(self):
        rec = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_SHARED)
        s = vkcreds.VehicleSession(VIN1, self.fleet.vehicle_keys[VIN1])
        s.open(self.fleet.verify, verify_pb2, self.fleet.issuer_public)
        req, md, bound = self.verify_bound_on_a(s, rec)
        # No record of it in Redis, unlike a random challenge's ...
        chal_key = f"vk:veh:{{{VIN1}}}:chal:"
        self.assertEqual(self.redis_cli("EXISTS", chal_key + bound.hex()), "0")
        rand = os.urandom(32)
        self.assertEqual(self.verify_on_item(self.verify_b,
                                             item(rec, self.phone,
                                                  challenge=rand)).decision,
                         R.DECISION_ALLOW)
        self.assertEqual(self.redis_cli("EXISTS", chal_key + rand.hex()), "1")
        # ... yet the very call replayed to either instance is refused.
        for stub in (self.fleet.verify, self.verify_b):
            with self.assertRaises(grpc.RpcError) as cm:
                stub.VerifyKey(req, metadata=md, timeout=10)
            self.assertEqual(cm.exception.code(),
                             grpc.StatusCode.UNAUTHENTICATED)
        # A one-time key goes through the commit script: it counts the use
        # and leaves no record of a bound challenge either.
        once = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_ONE_TIME)
        _, _, bound = self.verify_bound_on_a(s, once)
        self.assertEqual(self.redis_cli("EXISTS", chal_key + bound.hex()), "0")
        self.assertEqual(self.redis_cli(
            "HGET", f"vk:veh:{{{VIN1}}}:key:{once.claims.key_id}", "uses"),
            "1")

    def verify_on_item(self, stub, it):
        return stub.VerifyKey(R.VerifyKeyRequest(vin=VIN1, item=it),
                              metadata=self.fleet.op_md, timeout=10).result

    def test_status_cache_invalidated_across_instances(self):
        rec = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_SHARED)
        s = self.session_on_b()
        # Twice: the second answer comes from B's cache.
        for _ in range(2):
            self.assertEqual(self.status_on_b(s, rec.claims.key_id),
                             F.KEY_STATUS_ACTIVE)
        self.fleet.manage(rec.claims.key_id, keys_pb2.KEY_OPERATION_REVOKE)
        acked = time.monotonic()
        deadline = acked + 5
        status = None
        while time.monotonic() < deadline:
            status = self.status_on_b(s, rec.claims.key_id)
            if status == F.KEY_STATUS_REVOKED:
                break
        self.assertEqual(status, F.KEY_STATUS_REVOKED)
        print(f"\nB's cached status was invalidated "
              f"{(time.monotonic() - acked) * 1000:.1f} ms after the "
              f"revoke's acknowledgement")

    def redis_cli(self, *args):
        """One command over one kept connection (new ones may be refused)."""
        import socket
        if not hasattr(self, "_redis_sock"):
            self._redis_sock = socket.create_connection(
                ("127.0.0.1", self.redis.port), timeout=10)
            self._redis_buf = self._redis_sock.makefile("rb")
            self.addCleanup(self._redis_sock.close)
        cmd = f"*{len(args)}\r\n" + "".join(
            f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        self._redis_sock.sendall(cmd.encode())
        line = self._redis_buf.readline()
        if line.startswith(b"$"):
            n = int(line[1:])
            return self._redis_buf.read(n + 2)[:-2].decode() if n >= 0 else ""
        if line.startswith(b"-"):
            raise RuntimeError(line.decode())
        return line[1:].decode().strip()

    def test_status_cache_off_while_feed_is_lost(self):
        rec = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_SHARED)
        s = self.session_on_b()
        for _ in range(2):
            self.assertEqual(self.status_on_b(s, rec.claims.key_id),
                             F.KEY_STATUS_ACTIVE)
        # Cut every pub/sub connection and keep them from coming back: no
        # invalidation can reach B now.
        clients = int(self.redis_cli("INFO", "clients").split(
            "connected_clients:")[1].split()[0])
        pubsub = self.redis_cli("CLIENT", "LIST", "TYPE", "pubsub").count(
            "id=")
        self.redis_cli("CONFIG", "SET", "maxclients", str(clients - pubsub))
        self.addCleanup(self.redis_cli, "CONFIG", "SET", "maxclients",
                        "10000")
        self.redis_cli("CLIENT", "KILL", "TYPE", "pubsub")
        self.fleet.manage(rec.claims.key_id, keys_pb2.KEY_OPERATION_REVOKE)
        # B may not answer from its cache: it reads Redis, and sees REVOKED.
        self.assertEqual(self.status_on_b(s, rec.claims.key_id),
                         F.KEY_STATUS_REVOKED)

    def test_one_time_key_used_concurrently_on_two_instances(self):
        for _ in range(5):
            rec = self.fleet.apply(self.phone, key_type=F.KEY_TYPE_ONE_TIME)
            stubs = [self.fleet.verify, self.verify_b] * 2
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda s: self.verify_on(s, rec),
                                        stubs))
            allowed = [r for r in results if r.decision == R.DECISION_ALLOW]
            self.assertEqual(len(allowed), 1, results)
            for r in results:
                if r.decision != R.DECISION_ALLOW:
                    self.assertEqual(r.reason, R.DENY_REASON_USES_EXHAUSTED)

    def test_token_signature_cache_shared_in_redis(self):
        import hashlib
        rec = self.fleet.apply(self.phone)
        digest = hashlib.sha256(rec.key.claims + rec.key.signature).hexdigest()
        sig_key = f"vk:veh:{{{VIN1}}}:sig:{digest}"
        self.assertEqual(self.redis_cli("EXISTS", sig_key), "0")
        self.assertEqual(self.verify_on(self.fleet.verify, rec).decision,
                         R.DECISION_ALLOW)
        # A verified the signature and shared the result with B.
        self.assertEqual(self.redis_cli("EXISTS", sig_key), "1")
        self.assertEqual(self.verify_on(self.verify_b, rec).decision,
                         R.DECISION_ALLOW)
        # A bad signature is never recorded.
        bad = R.VerifyKeyItem()
        bad.CopyFrom(item(rec, self.phone))
        sig = bytearray(bad.key.signature)
        sig[5] ^= 0x40
        bad.key.signature = bytes(sig)
        res = self.verify_b.VerifyKey(R.VerifyKeyRequest(vin=VIN1, item=bad),
                                      metadata=self.fleet.op_md,
                                      timeout=10).result
        self.assertEqual(res.reason, R.DENY_REASON_BAD_KEY_SIGNATURE)
        bad_digest = hashlib.sha256(bad.key.claims
                                    + bad.key.signature).hexdigest()
        self.assertEqual(
            self.redis_cli("EXISTS", f"vk:veh:{{{VIN1}}}:sig:{bad_digest}"),
            "0")

    def test_scripts_survive_script_flush(self):
        # A restarted or failed-over Redis forgets loaded scripts: the
        # EVALSHA answers NOSCRIPT and vkeyd resends the script once.
        rec = self.fleet.apply(self.phone)
        s = self.session_on_b()
        self.assertEqual(self.verify_on(self.verify_b, rec).decision,
                         R.DECISION_ALLOW)
        self.redis_cli("SCRIPT", "FLUSH")
        self.assertEqual(self.verify_on(self.verify_b, rec).decision,
                         R.DECISION_ALLOW)
        self.redis_cli("SCRIPT", "FLUSH")
        self.assertEqual(self.status_on_b(s, rec.claims.key_id),
                         F.KEY_STATUS_ACTIVE)

    def test_redis_down_fails_closed(self):
        rec = self.fleet.apply(self.phone)
        self.assertEqual(self.verify_on(self.verify_b, rec).decision,
                         R.DECISION_ALLOW)
        self.redis.stop()
        with self.assertRaises(grpc.RpcError) as cm:
            self.verify_on(self.verify_b, rec)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)


class TwoLoopTest(TwoInstanceTest):
    """The same, with A and B two event loops of one vkeyd (--loops 2).

    Connections are dealt to the loops in turn, and each channel here has
    a connection of its own: the fleet's channel and B's, opened one after
    the other, are served by different loops, which must then agree the
    way two instances do (sessions, caches, one-time keys, Redis down).
    """

    def setUp(self):
        vkharness.ServerTestCase.setUp(self)
        self.redis, url = self.start_redis()
        self.a = self.b = self.start_vkeyd("--loops", "2", redis_url=url,
                                           name="a")
        data_a = os.path.join(self.workdir, "a-data")
        self.fleet = Fleet(self, self.a, data_a)
        self.fleet.setup()
        self.chan_b = grpc.insecure_channel(
            self.b.target, options=[("grpc.use_local_subchannel_pool", 1)])
        self.addCleanup(self.chan_b.close)
        self.verify_b = verify_pb2_grpc.VerifyServiceStub(self.chan_b)
        self.phone = vkcreds.Ed25519Key()


if __name__ == "__main__":
    unittest.main()
