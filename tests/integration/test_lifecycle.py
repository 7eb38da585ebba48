"""Seed 000's whole flow end to end, through deploy/vkeyctl.

An operator registers a user and a vehicle and binds the owner; the owner's
phone applies for a key (S210-S240) and stores it (S250); the vehicle end
syncs its store from the channel (S240-S250), reports its key management
information (S260); the owner suspends, resumes and revokes the key
(S270-S280) and the vehicle receives each change once, in order. A vehicle
that was offline while a key was issued and revoked gets both events on
its next sync, exactly once and in order. The store files are private and
the audit trail lists every operation.

Everything is real: vkeyctl runs as a subprocess against vkeyd with its
embedded redis-server, as a user types it.
"""

import base64
import json
import os
import queue
import signal
import subprocess
import threading
import unittest

import vkharness  # noqa: F401  (grafts the generated stubs first)

import vkcreds
from vkey.v1 import common_pb2
from test_vkeyctl import VKEYCTL, VkeyctlMixin

VIN = "WVWZZZ1JZXW000001"
OFFLINE_VIN = "WVWZZZ1JZXW000002"
WAIT = 30  # seconds to wait for a --follow line (a bound, not a timing)
POLICY = {
    "sharing_allowed": True,
    "holder_may_revoke_own": True,
    "max_share_depth": 0,
    "grantable_functions": ["unlock", "lock", "climate"],
    "max_keys": {"shared": 3, "temporary": 2},
}


class LifecycleTest(VkeyctlMixin, vkharness.ServerTestCase):

    def setUp(self):
        super().setUp()
        self.vkeyd = self.start_vkeyd()

    def run_ctl(self, *args, **kw):
        return self.ctl(*args, server=self.vkeyd, **kw)

    def json_ctl(self, *args):
        return self.ctl_json(*args, server=self.vkeyd)

    def store(self, name):
        with open(self.path(name)) as f:
            return json.load(f)

    def sync(self, vin, car, store):
        """One vehicle-sync run; returns the event lines it printed."""
        out = self.run_ctl("vehicle-sync", vin, "--vehicle-key", car,
                           "--store", store, "--until-idle", "2").stdout
        return out.splitlines()

    def issuer_keys(self):
        return {kid: bytes.fromhex(pub)
                for kid, pub in self.json_ctl("issuer-keys").items()}

    def assertVerifies(self, entry, vin, key_id):
        sk = common_pb2.SignedKey(
            claims=base64.b64decode(entry["signed_key"]["claims"]),
            signature=base64.b64decode(
                entry["signed_key"]["signature"]))
        claims = common_pb2.KeyClaims.FromString(sk.claims)
        self.assertEqual((claims.key_id, claims.vin), (key_id, vin))
        pub = self.issuer_keys()[claims.issuer_key_id]
        self.assertTrue(vkcreds.verify_signed_key(sk, pub))
        return claims

    def register(self, vin, car):
        self.run_ctl("vehicle-keygen", "--out", car)
        self.run_ctl("register-vehicle", vin, "--vehicle-key", car,
                     "--model", "ID.3")
        out = self.run_ctl("set-owner", vin, "alice").stdout
        self.assertIn("owner=alice", out)

    def test_apply_sync_report_manage(self):
        car, phone_key = self.path("car.key"), self.path("alice.key")
        phone, vstore = self.path("alice-phone.json"), self.path("car.json")

        # Operator: a user and a vehicle, bound.
        self.run_ctl("register-user", "alice", "--name", "Alice")
        self.register(VIN, car)
        vehicles = self.json_ctl("vehicles")
        self.assertEqual([(v["vin"], v["owner_user_id"]) for v in vehicles],
                         [(VIN, "alice")])
        self.assertEqual([u["user_id"] for u in self.json_ctl("users")],
                         ["alice"])

        # S210-S250, the phone side: apply, verify offline, store.
        self.run_ctl("phone-keygen", "--out", phone_key)
        key_id = self.run_ctl("apply", "--as", "alice", "--vin", VIN,
                              "--type", "owner", "--phone-key", phone_key,
                              "--store", phone).stdout.strip()
        self.assertRegex(key_id, "^" + VIN + r"\.[0-9a-f]{16}$")
        held = self.json_ctl("phone-keys", "--store", phone)
        self.assertEqual(held["user"], "alice")
        self.assertEqual(list(held["keys"]), [key_id])
        entry = held["keys"][key_id]
        self.assertEqual((entry["type"], entry["status"], entry["holder"]),
                         ("owner", "active", "alice"))
        claims = self.assertVerifies(entry, VIN, key_id)
        self.assertEqual(claims.holder_public_key,
                         vkcreds.Ed25519Key.load(phone_key).public)
        listed = self.json_ctl("keys", "--as", "alice")
        self.assertEqual([k["claims"]["key_id"] for k in listed], [key_id])

        # S240-S250, the vehicle side: the channel delivers ISSUED.
        lines = self.sync(VIN, car, vstore)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], f"^seq 1 ISSUED {key_id} v1 active$")
        vs = self.store("car.json")
        self.assertEqual((vs["vin"], vs["seq"]), (VIN, 1))
        self.assertEqual(vs["keys"][key_id]["status"], "active")
        self.assertVerifies(vs["keys"][key_id], VIN, key_id)
        # Acknowledged: a second sync gets nothing.
        self.assertEqual(self.sync(VIN, car, vstore), [])

        # S260: the vehicle reports its store and its policy.
        policy = self.path("policy.json")
        with open(policy, "w") as f:
            json.dump(POLICY, f)
        report = self.json_ctl("vehicle-report", VIN, "--vehicle-key", car,
                               "--store", vstore, "--policy", policy)
        self.assertTrue(report.get("digest_matches"), report)
        self.assertFalse(report.get("redelivered"), report)
        self.assertFalse(report.get("revoked_again"), report)

        # S270-S280: the owner manages the key; the phone store follows.
        for op, status in (("suspend", "suspended"), ("resume", "active"),
                           ("revoke", "revoked")):
            out = self.run_ctl("manage", key_id, op, "--as", "alice",
                               "--store", phone).stdout
            self.assertIn(f"{key_id}  owner  {status}", out)
            self.assertEqual(
                self.store("alice-phone.json")["keys"][key_id]["status"],
                status)
        shown = self.json_ctl("key", key_id, "--as", "alice")
        self.assertEqual(shown["status"], "KEY_STATUS_REVOKED")

        # The vehicle receives each change once, in order.
        lines = self.sync(VIN, car, vstore)
        self.assertEqual([" ".join(l.split()[:4]) for l in lines],
                         [f"seq 2 SUSPENDED {key_id}",
                          f"seq 3 RESUMED {key_id}",
                          f"seq 4 REVOKED {key_id}"], lines)
        self.assertTrue(lines[-1].endswith(" revoked"), lines)
        vs = self.store("car.json")
        self.assertEqual(vs["seq"], 4)
        self.assertEqual(vs["keys"][key_id]["status"], "revoked")
        self.assertEqual(self.sync(VIN, car, vstore), [])
        # A revoked key is no longer held; the service agrees.
        report = self.json_ctl("vehicle-report", VIN, "--vehicle-key", car,
                               "--store", vstore)
        self.assertTrue(report.get("digest_matches"), report)

        # Private files: keys and both stores.
        for path in (car, phone_key, phone, vstore):
            self.assertPrivate(path)

        # The audit trail lists every operation, each ok.
        audit = self.json_ctl("audit", VIN)
        ops = sorted(e["operation"] for e in audit if e["result"] == "ok")
        for op in ("RegisterVehicle", "SetVehicleOwner", "ApplyKey"):
            self.assertIn(op, ops)
        self.assertGreaterEqual(
            sum(1 for e in audit if e["result"] == "ok"
                and e.get("key_id") == key_id), 4, audit)
        users = self.json_ctl("audit")
        self.assertIn("RegisterUser", [e["operation"] for e in users])

    def test_offline_vehicle_gets_everything_once_in_order(self):
        car, phone_key = self.path("car2.key"), self.path("alice.key")
        vstore = self.path("car2.json")
        self.run_ctl("register-user", "alice")
        self.register(OFFLINE_VIN, car)
        self.run_ctl("phone-keygen", "--p256", "--out", phone_key)

        # No sync runs while a key is issued and revoked, and another issued.
        first = self.run_ctl("apply", "--as", "alice", "--vin", OFFLINE_VIN,
                             "--phone-key", phone_key).stdout.strip()
        self.run_ctl("manage", first, "revoke", "--as", "alice")
        second = self.run_ctl("apply", "--as", "alice", "--vin", OFFLINE_VIN,
                              "--phone-key", phone_key).stdout.strip()
        self.assertNotEqual(first, second)
        # The default phone store is ~/.vkey/phone-alice.json (HOME is the
        # test's workdir here), and the phone holds the revoked one as such.
        held = self.store(".vkey/phone-alice.json")["keys"]
        self.assertEqual(held[first]["status"], "revoked")
        self.assertEqual(held[second]["status"], "active")
        self.assertPrivate(self.path(".vkey/phone-alice.json"))

        lines = self.sync(OFFLINE_VIN, car, vstore)
        self.assertEqual([" ".join(l.split()[:4]) for l in lines],
                         [f"seq 1 ISSUED {first}", f"seq 2 REVOKED {first}",
                          f"seq 3 ISSUED {second}"], lines)
        vs = self.store("car2.json")
        self.assertEqual(vs["seq"], 3)
        self.assertEqual(vs["keys"][first]["status"], "revoked")
        self.assertEqual(vs["keys"][second]["status"], "active")
        self.assertEqual(vs.get("rejected"), [])
        # Exactly once: nothing comes again.
        self.assertEqual(self.sync(OFFLINE_VIN, car, vstore), [])
        self.assertPrivate(vstore)

    def test_follow_keeps_the_store_in_sync(self):
        car, phone_key = self.path("car3.key"), self.path("alice.key")
        vstore = self.path("car3.json")
        self.run_ctl("register-user", "alice")
        self.register(VIN, car)
        self.run_ctl("phone-keygen", "--out", phone_key)

        env = {k: v for k, v in os.environ.items()
               if not k.startswith("VKEY_")}
        env.update(HOME=self.workdir, VKEY_PYTHON_STUBS=os.path.abspath(
            vkharness.GEN_PYTHON))
        follower = subprocess.Popen(
            [VKEYCTL, "--server", self.vkeyd.target, "vehicle-sync", VIN,
             "--vehicle-key", car, "--store", vstore, "--follow"],
            env=env, cwd=self.workdir, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        lines = queue.Queue()

        def read():
            for line in follower.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            key_id = self.run_ctl("apply", "--as", "alice", "--vin", VIN,
                                  "--phone-key", phone_key).stdout.strip()
            self.assertEqual(lines.get(timeout=WAIT),
                             f"seq 1 ISSUED {key_id} v1 active")
            self.run_ctl("manage", key_id, "suspend", "--as", "alice")
            self.assertEqual(lines.get(timeout=WAIT),
                             f"seq 2 SUSPENDED {key_id} v1 suspended")
            self.assertEqual(self.store("car3.json")["keys"][key_id]["status"],
                             "suspended")
        finally:
            follower.send_signal(signal.SIGTERM)
            try:
                rc = follower.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                follower.kill()
                follower.wait()
                raise
        self.assertEqual(rc, 0, follower.stderr.read())
        follower.stdout.close()
        follower.stderr.close()
        self.assertPrivate(vstore)
        # Everything it printed was acknowledged: nothing comes again.
        self.assertEqual(self.sync(VIN, car, vstore), [])


if __name__ == "__main__":
    unittest.main()
