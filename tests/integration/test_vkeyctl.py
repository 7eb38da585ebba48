"""deploy/vkeyctl as a user meets it: argument errors, an unreachable
server, credentials, key files and store files on disk.

vkeyctl runs as a subprocess (its own interpreter, /usr/bin/python3 from its
shebang) against a real vkeyd with its embedded redis-server. The
vehicle-sync event logic (each seq applied once, in order; a key that does
not verify is never stored) is also checked in-process, where a redelivery
of an already applied seq can be staged exactly.
"""

import base64
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import stat
import subprocess
import unittest

import vkharness  # noqa: F401  (grafts the generated stubs first)

import vkcreds
from vkey.v1 import common_pb2, identity_pb2, vehicle_pb2

VKEYCTL = os.path.join(vkharness.SOURCE_DIR, "deploy", "vkeyctl")
VIN = "WVWZZZ1JZXW000001"
CTL_TIMEOUT = 60  # seconds for one vkeyctl run


class VkeyctlMixin:
    """Runs vkeyctl with a clean environment: HOME is the test's workdir
    (phone stores, caches), the stubs are the build tree's."""

    def ctl(self, *args, server=None, check=True, expect=0):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("VKEY_")}
        env["HOME"] = self.workdir
        env["VKEY_PYTHON_STUBS"] = os.path.abspath(vkharness.GEN_PYTHON)
        argv = [VKEYCTL]
        if server is not None:
            argv += ["--server", server.target, "--data-dir",
                     os.path.join(self.workdir, server.name + "-data")]
        argv += [str(a) for a in args]
        r = subprocess.run(argv, env=env, cwd=self.workdir, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=CTL_TIMEOUT, check=False)
        if check and r.returncode != expect:
            self.fail(f"vkeyctl {' '.join(argv[1:])} exited {r.returncode},"
                      f" not {expect}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def ctl_json(self, *args, server=None):
        return json.loads(self.ctl("--json", *args, server=server).stdout)

    def path(self, name):
        return os.path.join(self.workdir, name)

    def assertPrivate(self, path):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        self.assertEqual(mode, 0o600, f"{path} has mode {mode:o}")

    def assertOneLineError(self, r, code, *fragments):
        self.assertEqual(r.returncode, code, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("vkeyctl: "), r.stderr)
        for f in fragments:
            self.assertIn(f, last)
        self.assertNotIn("Traceback", r.stderr)


class UsageTest(VkeyctlMixin, vkharness.ServerTestCase):
    """What needs no server: exit 2 on usage errors, 1 on failures."""

    def test_no_command(self):
        r = self.ctl(check=False)
        self.assertOneLineError(r, 2, "required: COMMAND")
        self.assertIn("usage: vkeyctl", r.stderr)

    def test_unknown_command(self):
        r = self.ctl("frobnicate", check=False)
        self.assertOneLineError(r, 2, "unknown command 'frobnicate'")

    def test_missing_arguments(self):
        cases = [
            (("apply",), "--as"),
            (("apply", "--as", "alice", "--vin", VIN), "--phone-key"),
            (("register-vehicle", VIN), "--vehicle-key"),
            (("register-user",), "USER"),
            (("set-owner", VIN), "USER"),
            (("token",), "--user --operator"),
            (("token", "--user", "a", "--operator", "b"), "not allowed"),
            (("manage", f"{VIN}.0123456789abcdef", "explode"),
             "invalid choice"),
            (("vehicle-sync", VIN, "--vehicle-key", "k", "--store", "s",
              "--follow", "--until-idle", "3"), "not allowed"),
            (("phone-keygen",), "--out"),
            (("verify", f"{VIN}.0123456789abcdef", "--as", "alice"),
             "--function"),
            (("verify", "--as", "alice", "--function", "unlock"), "KEYID"),
            (("key-status", VIN, f"{VIN}.0123456789abcdef"),
             "--vehicle-key"),
            (("key-status", VIN, "--vehicle-key", "k"), "KEYID"),
            (("--timeout", "soon", "users"), "invalid float"),
        ]
        for args, fragment in cases:
            with self.subTest(args=args):
                r = self.ctl(*args, check=False)
                self.assertOneLineError(r, 2, fragment)

    def test_manage_value_errors(self):
        kid = f"{VIN}.0123456789abcdef"
        for args, fragment in (
                (("functions",), "functions needs a list"),
                (("validity",), "validity needs --hours"),
                (("revoke", "now"), "revoke takes no value")):
            with self.subTest(args=args):
                r = self.ctl("manage", kid, *args, check=False)
                self.assertOneLineError(r, 2, fragment)

    def test_help_for_every_command(self):
        top = self.ctl("--help").stdout
        for name in ("register-user", "register-vehicle", "set-owner",
                     "vehicles", "users", "audit", "phone-keygen", "apply",
                     "keys", "key", "manage", "phone-keys", "issuer-keys",
                     "vehicle-keygen", "vehicle-sync", "vehicle-report",
                     "verify", "key-status", "token", "health", "call"):
            with self.subTest(command=name):
                self.assertIn(name, top)
                out = self.ctl(name, "--help").stdout
                self.assertIn(f"usage: vkeyctl {name}", out)
                self.assertIn("--server", out)  # global flags anywhere

    def test_verify_documents_its_exit_status(self):
        out = self.ctl("verify", "--help").stdout
        self.assertIn("exit status:", out)
        for line in ("0  ALLOW", "3  DENY", "1  an error"):
            self.assertIn(line, out)
        self.assertIn("exit 0 ALLOW, 3 DENY", self.ctl("--help").stdout)

    def test_server_down(self):
        port = vkharness.free_port()
        for args in (("users",), ("health",), ("issuer-keys",)):
            with self.subTest(args=args):
                r = self.ctl("--server", f"127.0.0.1:{port}", "--token", "x",
                             *args, check=False)
                self.assertOneLineError(
                    r, 1, f"cannot reach vkeyd at 127.0.0.1:{port}")

    def test_key_files_are_private(self):
        car, phone, p256 = (self.path(n) for n in
                            ("keys/car.key", "phone.key", "phone-p256.pem"))
        out = self.ctl("vehicle-keygen", "--out", car).stdout
        self.assertPrivate(car)
        key = vkcreds.Ed25519Key.load(car)
        self.assertIn(key.public.hex(), out)
        self.ctl("phone-keygen", "--out", phone)
        self.assertPrivate(phone)
        vkcreds.Ed25519Key.load(phone)
        self.ctl("phone-keygen", "--p256", "--out", p256)
        self.assertPrivate(p256)
        with open(p256) as f:
            self.assertTrue(f.read().startswith("-----BEGIN PRIVATE KEY"))

        # A key is never replaced silently.
        r = self.ctl("vehicle-keygen", "--out", car, check=False)
        self.assertOneLineError(r, 1, "exists", "--force")
        self.assertEqual(vkcreds.Ed25519Key.load(car).seed, key.seed)
        os.chmod(car, 0o644)
        self.ctl("vehicle-keygen", "--out", car, "--force")
        self.assertPrivate(car)
        self.assertNotEqual(vkcreds.Ed25519Key.load(car).seed, key.seed)

    def test_token_minting(self):
        data = self.path("data")
        os.makedirs(data)
        issuer = vkcreds.Ed25519Key()
        issuer.save(os.path.join(data, "identity-issuer.key"))
        tok = self.ctl("--data-dir", data, "token", "--user", "alice",
                       "--lifetime", "120").stdout.strip()
        body, sig = tok.split(".")
        claims = identity_pb2.IdentityClaims.FromString(
            base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        self.assertEqual(claims.subject, "alice")
        self.assertEqual(claims.role, identity_pb2.ROLE_USER)
        self.assertEqual(claims.expires_at - claims.issued_at, 120)
        self.assertEqual(claims.issuer_key_id, issuer.key_id)
        tok = self.ctl("--data-dir", data, "token", "--operator",
                       "ops").stdout.strip()
        claims = identity_pb2.IdentityClaims.FromString(
            base64.urlsafe_b64decode(
                tok.split(".")[0] + "=" * (-len(tok.split(".")[0]) % 4)))
        self.assertEqual(claims.role, identity_pb2.ROLE_OPERATOR)

        r = self.ctl("--data-dir", data, "token", "--user", "a",
                     "--lifetime", "90000", check=False)
        self.assertOneLineError(r, 1, "--lifetime")
        r = self.ctl("--data-dir", self.path("nowhere"), "token", "--user",
                     "a", check=False)
        self.assertOneLineError(r, 1, "no development issuer key")

    def test_bad_policy_and_store(self):
        car = self.path("car.key")
        self.ctl("vehicle-keygen", "--out", car)
        store = self.path("car.json")
        with open(store, "w") as f:
            json.dump({"format": 1, "kind": "vehicle", "vin": VIN, "seq": 0,
                       "keys": {}}, f)
        policy = self.path("policy.json")
        for body, fragment in (
                ({"sharing": True}, "unknown field(s) sharing"),
                ({"max_share_depth": -1}, "max_share_depth"),
                ({"grantable_functions": ["teleport"]},
                 "unknown function 'teleport'"),
                ({"max_keys": {"pet": 1}}, "unknown key type 'pet'")):
            with self.subTest(policy=body):
                with open(policy, "w") as f:
                    json.dump(body, f)
                r = self.ctl("--token", "x", "--server", "127.0.0.1:1",
                             "vehicle-report", VIN, "--vehicle-key", car,
                             "--store", store, "--policy", policy,
                             check=False)
                self.assertOneLineError(r, 1, fragment)
        r = self.ctl("vehicle-report", "WVWZZZ1JZXW000002", "--vehicle-key",
                     car, "--store", store, check=False)
        self.assertOneLineError(r, 1, f"store of {VIN}")
        with open(self.path("phone.json"), "w") as f:
            f.write("{not json")
        r = self.ctl("phone-keys", "--store", self.path("phone.json"),
                     check=False)
        self.assertOneLineError(r, 1, "cannot read phone store")


class ServerTest(VkeyctlMixin, vkharness.ServerTestCase):
    """Against a real vkeyd: credentials, status names, reflection."""

    def setUp(self):
        super().setUp()
        self.vkeyd = self.start_vkeyd()

    def test_health_and_call(self):
        self.assertEqual(self.ctl("health", server=self.vkeyd).stdout,
                         "SERVING\n")
        out = self.ctl("call", "grpc.health.v1.Health/Check",
                       server=self.vkeyd).stdout
        self.assertEqual(json.loads(out), {"status": "SERVING"})
        r = self.ctl("call", "grpc.health.v1.Health/Check",
                     '{"service": "no.such.Service"}', server=self.vkeyd,
                     check=False)
        self.assertOneLineError(r, 1, "NOT_FOUND")
        r = self.ctl("call", "grpc.health.v1.Health/Nope", server=self.vkeyd,
                     check=False)
        self.assertOneLineError(r, 1, "has no method Nope", "Check")
        r = self.ctl("call", "grpc.health.v1.Health/Check", '{"bogus": 1}',
                     server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, "request JSON")

    def test_status_names_and_credentials(self):
        # A registry error is its status name and vkeyd's message.
        r = self.ctl("register-user", "not a valid id!", server=self.vkeyd,
                     check=False)
        self.assertOneLineError(r, 1, "INVALID_ARGUMENT: ")
        # A user's token is no operator's.
        tok = self.ctl("token", "--user", "mallory",
                       server=self.vkeyd).stdout.strip()
        r = self.ctl("--token", tok, "users", server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, "PERMISSION_DENIED")
        r = self.ctl("--token", "garbage", "users", server=self.vkeyd,
                     check=False)
        self.assertOneLineError(r, 1, "UNAUTHENTICATED")
        # With no issuer key and no token, vkeyctl says what to do.
        r = self.ctl("--server", self.vkeyd.target, "--data-dir",
                     self.path("elsewhere"), "users", check=False)
        self.assertOneLineError(r, 1, "no --token given", "--data-dir")
        # An operator token minted by `token` works as --token, and global
        # flags may follow the command.
        tok = self.ctl("token", "--operator", "ops",
                       server=self.vkeyd).stdout.strip()
        self.ctl("register-user", "bob", "--server", self.vkeyd.target,
                 "--token", tok)
        users = self.ctl_json("users", server=self.vkeyd)
        self.assertEqual([u["user_id"] for u in users], ["bob"])


class VerifyTest(VkeyctlMixin, vkharness.ServerTestCase):
    """verify and key-status against a real vkeyd: the operator's way and
    the vehicle's (a session opened with its key), each deny reason the
    key's state causes, and the errors of a phone store."""

    def setUp(self):
        super().setUp()
        self.vkeyd = self.start_vkeyd()
        self.car = self.path("car.key")
        self.phone = self.path("alice-phone.key")
        for args in (("register-user", "alice"),
                     ("vehicle-keygen", "--out", self.car),
                     ("register-vehicle", VIN, "--vehicle-key", self.car),
                     ("set-owner", VIN, "alice"),
                     ("phone-keygen", "--out", self.phone)):
            self.ctl(*args, server=self.vkeyd)

    def apply(self, phone, *extra):
        return self.ctl("apply", "--as", "alice", "--vin", VIN,
                        "--phone-key", phone, *extra,
                        server=self.vkeyd).stdout.strip()

    def verify(self, kid, *extra, function="unlock", expect=0):
        return self.ctl("verify", kid, "--as", "alice", "--function",
                        function, *extra, server=self.vkeyd,
                        expect=expect).stdout

    def key_status(self, *kids):
        return self.ctl("key-status", VIN, *kids, "--vehicle-key", self.car,
                        server=self.vkeyd).stdout

    def assertDeny(self, out, kid, reason):
        self.assertTrue(out.startswith(f"DENY {kid} {reason} ("), out)
        self.assertTrue(out.endswith(")\n"), out)
        self.assertEqual(len(out.splitlines()), 1, out)

    def test_allow_deny_and_status(self):
        kid = self.apply(self.phone)
        car = ("--vehicle-key", self.car)
        # As the operator, then as the car in its session: the phone key
        # comes from the store, where apply recorded it.
        self.assertEqual(self.verify(kid), f"ALLOW {kid} unlock\n")
        self.assertEqual(self.verify(kid, *car), f"ALLOW {kid} unlock\n")
        res = json.loads(self.verify(kid, "--json", *car, function="drive"))
        self.assertEqual(res, {"decision": "DECISION_ALLOW", "key_id": kid})
        unknown = f"{VIN}.0000000000000000"
        self.assertEqual(self.key_status(kid, unknown),
                         f"{kid}  active  v1\n{unknown}  unknown\n")

        self.ctl("manage", kid, "suspend", "--as", "alice",
                 server=self.vkeyd)
        self.assertDeny(self.verify(kid, *car, expect=3), kid, "SUSPENDED")
        self.assertDeny(self.verify(kid, expect=3), kid, "SUSPENDED")
        res = json.loads(self.verify(kid, "--json", expect=3))
        self.assertEqual(res["decision"], "DECISION_DENY")
        self.assertEqual(res["reason"], "DENY_REASON_SUSPENDED")
        self.assertEqual(self.key_status(kid), f"{kid}  suspended  v1\n")

        self.ctl("manage", kid, "resume", "--as", "alice", server=self.vkeyd)
        self.assertEqual(self.verify(kid, *car), f"ALLOW {kid} unlock\n")
        self.ctl("manage", kid, "revoke", "--as", "alice", server=self.vkeyd)
        self.assertDeny(self.verify(kid, *car, expect=3), kid, "REVOKED")
        self.assertEqual(self.key_status(kid), f"{kid}  revoked  v1\n")

    def test_p256_phone_functions_and_proofs(self):
        p256 = self.path("p256.pem")
        self.ctl("phone-keygen", "--p256", "--out", p256)
        store = self.path("elsewhere.json")
        kid = self.apply(p256, "--type", "shared", "--functions", "unlock",
                         "--store", store)
        self.assertEqual(self.verify(kid, "--store", store,
                                     "--vehicle-key", self.car),
                         f"ALLOW {kid} unlock\n")
        self.assertDeny(self.verify(kid, "--store", store, function="drive",
                                    expect=3),
                        kid, "FUNCTION_NOT_PERMITTED")
        # Another P-256 key signs a proof vkey refuses; an Ed25519 key
        # cannot sign for a P-256 key at all.
        other = self.path("other.pem")
        self.ctl("phone-keygen", "--p256", "--out", other)
        r = self.ctl("verify", kid, "--as", "alice", "--function", "unlock",
                     "--store", store, "--phone-key", other,
                     server=self.vkeyd, expect=3)
        self.assertDeny(r.stdout, kid, "BAD_PROOF")
        self.assertIn("warning", r.stderr)
        r = self.ctl("verify", kid, "--as", "alice", "--function", "unlock",
                     "--store", store, "--phone-key", self.phone,
                     server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, "ecdsa-p256", self.phone)

    def test_session_resyncs_once(self):
        # In-process, where the vehicle can lose its counter on purpose: the
        # refusal's resync info is adopted and the call retried once.
        kid = self.apply(self.phone)
        mod = load_vkeyctl()
        args = mod.build_parser().parse_args(
            ["--server", self.vkeyd.target, "key-status", VIN, kid,
             "--vehicle-key", self.car])
        client = mod.Client(args)
        self.addCleanup(client.close)
        session = mod.open_session(client, VIN,
                                   vkcreds.Ed25519Key.load(self.car))
        req = mod.verify_pb2.CheckKeyStatusRequest(vin=VIN, key_ids=[kid])
        for _ in range(3):
            mod.session_call(client, session, "CheckKeyStatus", req)
        session.counter = 0  # its next counter, 1, was seen: a replay
        resp = mod.session_call(client, session, "CheckKeyStatus", req)
        self.assertEqual(resp.keys[0].status, common_pb2.KEY_STATUS_ACTIVE)
        self.assertGreaterEqual(session.counter, 4)

    def challenge_records(self):
        sock = os.path.join(self.workdir, "vkeyd-data", "redis.sock")
        out = subprocess.run(
            ["redis-cli", "-s", sock, "--scan", "--pattern",
             f"vk:veh:{{{VIN}}}:chal:*"],
            capture_output=True, text=True, check=True, timeout=30).stdout
        return out.split()

    def test_the_vehicle_binds_its_challenge_to_its_call(self):
        kid = self.apply(self.phone)
        # The car's challenge names its session call: vkey keeps no record
        # of it. A cloud service's random one is recorded, once.
        self.assertEqual(self.verify(kid, "--vehicle-key", self.car),
                         f"ALLOW {kid} unlock\n")
        self.assertEqual(self.challenge_records(), [])
        self.assertEqual(self.verify(kid), f"ALLOW {kid} unlock\n")
        random_one = self.challenge_records()
        self.assertEqual(len(random_one), 1)
        # After a resync the retry is a new call: its challenge is built
        # again for it (one naming the refused call would be a mismatch).
        mod = load_vkeyctl()
        args = mod.build_parser().parse_args(
            ["--server", self.vkeyd.target, "verify", kid, "--as", "alice",
             "--function", "unlock", "--store",
             self.path(".vkey/phone-alice.json"), "--vehicle-key", self.car])
        client = mod.Client(args)
        self.addCleanup(client.close)
        signed, claims, phone = mod.stored_key(args)
        session = mod.open_session(client, VIN,
                                   vkcreds.Ed25519Key.load(self.car))
        built = []

        def build(epoch, counter):
            built.append(counter)
            return mod.verify_request(signed, phone, VIN,
                                      common_pb2.VEHICLE_FUNCTION_UNLOCK,
                                      epoch, counter)

        mod.session_call(client, session, "VerifyKey", build)
        session.counter = 0  # its next counter, 1, was seen: a replay
        resp = mod.session_call(client, session, "VerifyKey", build)
        self.assertEqual(resp.result.decision,
                         mod.verify_pb2.DECISION_ALLOW, resp)
        self.assertEqual(built[1], 1)
        self.assertGreater(built[2], 1)  # the retry's own counter
        self.assertEqual(self.challenge_records(), random_one)

    def test_store_and_credential_errors(self):
        kid = self.apply(self.phone)
        store = os.path.join(self.workdir, ".vkey", "phone-alice.json")
        unknown = f"{VIN}.0123456789abcdef"
        r = self.ctl("verify", unknown, "--as", "alice", "--function",
                     "unlock", server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, f"key {unknown} is not in the phone "
                                f"store {store}")
        self.assertEqual(r.stdout, "")
        r = self.ctl("verify", kid, "--as", "bob", "--function", "unlock",
                     server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, "phone-bob.json does not exist")
        r = self.ctl("verify", kid, "--as", "alice", "--function", "fly",
                     server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, "unknown function 'fly'")
        # A store that does not say which phone key holds the key.
        with open(store) as f:
            data = json.load(f)
        del data["keys"][kid]["phone_key"]
        bare = self.path("bare.json")
        with open(bare, "w") as f:
            json.dump(data, f)
        r = self.ctl("verify", kid, "--as", "alice", "--function", "unlock",
                     "--store", bare, server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, "pass --phone-key")
        self.assertEqual(self.verify(kid, "--store", bare, "--phone-key",
                                     self.phone), f"ALLOW {kid} unlock\n")
        # Another vehicle key is no session; a user is no operator.
        r = self.ctl("verify", kid, "--as", "alice", "--function", "unlock",
                     "--vehicle-key", self.phone, server=self.vkeyd,
                     check=False)
        self.assertOneLineError(r, 1, "UNAUTHENTICATED")
        r = self.ctl("key-status", VIN, kid, "--vehicle-key", self.phone,
                     server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, "UNAUTHENTICATED")
        tok = self.ctl("token", "--user", "alice",
                       server=self.vkeyd).stdout.strip()
        r = self.ctl("--token", tok, "verify", kid, "--as", "alice",
                     "--function", "unlock", server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, "PERMISSION_DENIED")
        r = self.ctl("key-status", VIN, *[kid] * 65, "--vehicle-key",
                     self.car, server=self.vkeyd, check=False)
        self.assertOneLineError(r, 1, "at most 64 key ids")


def load_vkeyctl():
    """deploy/vkeyctl as a module (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("vkeyctl_mod", VKEYCTL)
    spec = importlib.util.spec_from_loader("vkeyctl_mod", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    os.environ["VKEY_PYTHON_STUBS"] = os.path.abspath(vkharness.GEN_PYTHON)
    mod.load_modules()
    return mod


class FakeClient:
    """Stands in for vkeyctl's Client: the issuer keys come from here."""

    def __init__(self, mod, issuer):
        self.mod = mod
        self._issuer_keys = {issuer.key_id: issuer.public}

    def issuer_keys(self, refresh=False):
        return self._issuer_keys

    check_key = None  # bound below to vkeyctl's real implementation


class SyncLogicTest(VkeyctlMixin, vkharness.ServerTestCase):
    """VehicleSync.apply in-process, with events a test can stage."""

    def test_each_seq_once_and_only_verified_keys(self):
        mod = load_vkeyctl()
        issuer = vkcreds.Ed25519Key()
        client = FakeClient(mod, issuer)
        client.check_key = mod.Client.check_key.__get__(client)
        sync = mod.VehicleSync.__new__(mod.VehicleSync)
        sync.client = client
        sync.a = type("A", (), {"vin": VIN})()
        sync.store = {"kind": "vehicle", "vin": VIN, "seq": 0, "keys": {},
                      "rejected": []}

        kid = VIN + ".00112233aabbccdd"

        def signed(version, signer=issuer, vin=VIN):
            c = common_pb2.KeyClaims(format=1, key_id=kid, vin=vin,
                                     key_type=common_pb2.KEY_TYPE_OWNER,
                                     issuer_key_id=issuer.key_id,
                                     version=version)
            body = c.SerializeToString()
            return common_pb2.SignedKey(
                claims=body, signature=signer.sign(vkcreds.KEY_CONTEXT + body))

        E = vehicle_pb2
        issued = E.KeyEvent(seq=1, type=E.KEY_EVENT_TYPE_ISSUED, key_id=kid,
                            key_version=1, key=signed(1),
                            status=common_pb2.KEY_STATUS_ACTIVE)
        self.assertIn("seq 1 ISSUED", sync.apply(issued))
        self.assertEqual(sync.store["keys"][kid]["status"], "active")
        # A redelivered seq (the ack was lost) changes nothing.
        sync.store["keys"][kid]["status"] = "marker"
        self.assertIn("already applied", sync.apply(issued))
        self.assertEqual(sync.store["keys"][kid]["status"], "marker")
        revoked = E.KeyEvent(seq=2, type=E.KEY_EVENT_TYPE_REVOKED, key_id=kid,
                             key_version=1,
                             status=common_pb2.KEY_STATUS_REVOKED)
        self.assertIn("seq 2 REVOKED", sync.apply(revoked))
        self.assertEqual(sync.store["keys"][kid]["status"], "revoked")
        self.assertEqual(sync.store["seq"], 2)
        # A key signed by anyone else, or for another vehicle, is rejected
        # (and its seq consumed, so the channel does not stall on it).
        forged = E.KeyEvent(seq=3, type=E.KEY_EVENT_TYPE_RESUMED, key_id=kid,
                            key_version=2,
                            key=signed(2, signer=vkcreds.Ed25519Key()),
                            status=common_pb2.KEY_STATUS_ACTIVE)
        self.assertIn("REJECTED", sync.apply(forged))
        other = E.KeyEvent(seq=4, type=E.KEY_EVENT_TYPE_RESUMED, key_id=kid,
                           key_version=2,
                           key=signed(2, vin="WVWZZZ1JZXW000002"),
                           status=common_pb2.KEY_STATUS_ACTIVE)
        self.assertIn("REJECTED", sync.apply(other))
        self.assertEqual(sync.store["keys"][kid]["status"], "revoked")
        self.assertEqual(sync.store["seq"], 4)
        self.assertEqual([r["seq"] for r in sync.store["rejected"]], [3, 4])
        deleted = E.KeyEvent(seq=5, type=E.KEY_EVENT_TYPE_DELETED, key_id=kid,
                             status=common_pb2.KEY_STATUS_DELETED)
        sync.apply(deleted)
        self.assertNotIn(kid, sync.store["keys"])

    def test_store_digest(self):
        mod = load_vkeyctl()
        want = hashlib.sha256(b"A.1:2\nB.1:1\n").digest()
        self.assertEqual(mod.store_digest([("B.1", 1), ("A.1", 2)]), want)

    def test_private_json_write(self):
        mod = load_vkeyctl()
        path = self.path("sub/store.json")
        mod.write_private_json(path, {"a": 1})
        self.assertPrivate(path)
        os.chmod(path, 0o644)
        mod.write_private_json(path, {"a": 2})
        self.assertPrivate(path)
        with open(path) as f:
            self.assertEqual(json.load(f), {"a": 2})
        self.assertEqual(os.listdir(self.path("sub")), ["store.json"])


if __name__ == "__main__":
    unittest.main()
