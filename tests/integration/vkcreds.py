"""Credentials for tests and vkeyctl: identity tokens and vehicle assertions.

Mirrors proto/vkey/v1/identity.proto and docs/ARCHITECTURE.md ("Identity"):
  token     = b64url(IdentityClaims) "." b64url(Ed25519(ctx_id || claims))
  assertion = VehicleAssertion signed over
              "vkey-vehicle-v1\\0" VIN "\\0" :path "\\0" u64be(ts) nonce
Keys are 32-byte Ed25519 seeds stored as 64 hex digits, as vkeyd does.
"""

import base64
import hashlib
import os
import struct
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature)

from vkey.v1 import identity_pb2

IDENTITY_CONTEXT = b"vkey-identity-v1\0"
VEHICLE_CONTEXT = b"vkey-vehicle-v1\0"
KEY_CONTEXT = b"vkey-key-v1\0"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(public_key):
    """vkeyd's key id: the first 8 bytes of SHA-256(public key), in hex."""
    return hashlib.sha256(public_key).hexdigest()[:16]


class Ed25519Key:
    def __init__(self, seed=None):
        self.seed = seed if seed is not None else os.urandom(32)
        self.private = ed25519.Ed25519PrivateKey.from_private_bytes(self.seed)
        self.public = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(self.public)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(bytes.fromhex(f.read().strip()))

    def save(self, path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.seed.hex() + "\n")

    def sign(self, msg):
        return self.private.sign(msg)


class P256Key:
    """A phone's secure-element style key: ECDSA P-256 with SHA-256."""

    def __init__(self):
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.public = self.private.public_key().public_bytes(
            serialization.Encoding.X962,
            serialization.PublicFormat.UncompressedPoint)

    def sign(self, msg, raw=False):
        der = self.private.sign(msg, ec.ECDSA(hashes.SHA256()))
        if not raw:
            return der
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def mint_token(issuer, subject, role="user", lifetime=3600, now=None):
    """A bearer token for `subject` signed by `issuer` (an Ed25519Key)."""
    now = int(time.time()) if now is None else now
    claims = identity_pb2.IdentityClaims(
        subject=subject,
        role=(identity_pb2.ROLE_OPERATOR if role == "operator"
              else identity_pb2.ROLE_USER),
        issued_at=now,
        expires_at=now + lifetime,
        issuer_key_id=issuer.key_id)
    body = claims.SerializeToString()
    return b64url(body) + "." + b64url(issuer.sign(IDENTITY_CONTEXT + body))


def bearer(token):
    return [("authorization", "Bearer " + token)]


def vehicle_assertion(vehicle_key, vin, method_path, now=None, nonce=None):
    """Serialized VehicleAssertion for one call of `method_path`."""
    now = int(time.time()) if now is None else now
    nonce = os.urandom(16) if nonce is None else nonce
    msg = (VEHICLE_CONTEXT + vin.encode() + b"\0" + method_path.encode()
           + b"\0" + struct.pack(">Q", now) + nonce)
    a = identity_pb2.VehicleAssertion(
        vin=vin, timestamp=now, nonce=nonce, signature=vehicle_key.sign(msg))
    return a.SerializeToString()


def vehicle_metadata(vehicle_key, vin, method_path, **kw):
    return [("x-vkey-vehicle-bin",
             vehicle_assertion(vehicle_key, vin, method_path, **kw))]


def verify_signed_key(signed_key, issuer_public):
    """Checks a SignedKey offline, as a vehicle does. Returns True/False."""
    pub = ed25519.Ed25519PublicKey.from_public_bytes(issuer_public)
    try:
        pub.verify(signed_key.signature, KEY_CONTEXT + signed_key.claims)
        return True
    except Exception:  # cryptography raises InvalidSignature
        return False


# --- vehicle sessions (docs/SESSIONS.md) and phone proofs (verify.proto) ---

from cryptography.hazmat.primitives import hmac as _hmac  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import x25519  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402

SESSION_CONTEXT = b"vkey-session-v1\0"
REQUEST_CONTEXT = b"vkey-req-v1\0"
SYNC_CONTEXT = b"vkey-session-sync-v1\0"
PROOF_CONTEXT = b"vkey-proof-v1\0"


def proof_message(challenge, vin, function, timestamp_ms):
    return (PROOF_CONTEXT + challenge + vin.encode() + b"\0"
            + struct.pack(">IQ", function, timestamp_ms))


BOUND_CHALLENGE_PREFIX = b"vkey-challenge-v1"


def bound_challenge(epoch, counter, index, extra=b""):
    """A challenge bound to item `index` of session call (epoch, counter)."""
    return (BOUND_CHALLENGE_PREFIX + epoch + struct.pack(">QB", counter, index)
            + extra)


def sign_proof(phone_key, challenge, vin, function, timestamp_ms=None):
    """The phone's proof of possession for VerifyKeyItem."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return ts, phone_key.sign(proof_message(challenge, vin, function, ts))


def _hmac_sha256(key, data):
    h = _hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


class VehicleSession:
    """The vehicle's side of a session: open it, then tag requests."""

    def __init__(self, vin, vehicle_key):
        self.vin = vin
        self.vehicle_key = vehicle_key
        self.epoch = None
        self.mac_key = None
        self.counter = 0
        self.clock_offset_ms = 0

    def open(self, verify_stub, verify_pb2, issuer_public, timeout=10):
        eph = x25519.X25519PrivateKey.generate()
        pub = eph.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        md = vehicle_metadata(self.vehicle_key, self.vin,
                              "/vkey.v1.VerifyService/OpenSession")
        resp = verify_stub.OpenSession(
            verify_pb2.OpenSessionRequest(vin=self.vin, vehicle_public_key=pub),
            metadata=md, timeout=timeout)
        signed = resp.session
        ed25519.Ed25519PublicKey.from_public_bytes(issuer_public).verify(
            signed.signature, SESSION_CONTEXT + signed.session_info)
        info = verify_pb2.SessionInfo.FromString(signed.session_info)
        assert info.vehicle_public_key == pub and info.vin == self.vin
        shared = eph.exchange(
            x25519.X25519PublicKey.from_public_bytes(info.server_public_key))
        self.mac_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=info.epoch,
            info=SESSION_CONTEXT + self.vin.encode()).derive(shared)
        self.epoch = info.epoch
        self.counter = info.counter
        self.clock_offset_ms = info.clock_time_ms - int(time.time() * 1000)
        return info

    def auth(self, verify_pb2, path, request, counter=None, expires_at_ms=None):
        """x-vkey-session-bin metadata for one call of `path`; `request` is
        the message, or its bytes as they will be sent."""
        if counter is None:
            self.counter += 1
            counter = self.counter
        now = int(time.time() * 1000) + self.clock_offset_ms
        exp = now + 30000 if expires_at_ms is None else expires_at_ms
        body = (request if isinstance(request, bytes)
                else request.SerializeToString())
        digest = hashlib.sha256(body).digest()
        msg = (REQUEST_CONTEXT + self.vin.encode() + b"\0" + path.encode()
               + b"\0" + self.epoch + struct.pack(">QQ", counter, exp)
               + digest)
        a = verify_pb2.SessionAuth(epoch=self.epoch, counter=counter,
                                   expires_at_ms=exp,
                                   tag=_hmac_sha256(self.mac_key, msg))
        return [("x-vkey-session-bin", a.SerializeToString())], a.tag

    def resync(self, verify_pb2, trailers, tag):
        """Adopts the session info in a refusal's trailers. Returns it."""
        for k, v in trailers:
            if k == "x-vkey-session-info-bin":
                s = verify_pb2.SignedSessionInfo.FromString(v)
                want = _hmac_sha256(self.mac_key,
                                    SYNC_CONTEXT + s.session_info + tag)
                if want != s.mac:
                    raise ValueError("resync info does not authenticate")
                info = verify_pb2.SessionInfo.FromString(s.session_info)
                self.counter = info.counter
                self.clock_offset_ms = (info.clock_time_ms
                                        - int(time.time() * 1000))
                return info
        return None
