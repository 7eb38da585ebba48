"""vkey-bench against a real vkeyd: requests prebuilt before the run.

With --prebuild N the signer threads build N requests (the phones' signatures
and the vehicles' session tags) before the warm-up and none during the
measured window; when the window outlasts them it ends where they ran out.
The server must accept every prebuilt request: a proof signed seconds
before it is sent, and session counters far ahead of the last one seen.
"""

import json
import os
import subprocess
import unittest

import vkharness
from vkharness import binary


class PrebuiltRunTest(vkharness.ServerTestCase):

    def setUp(self):
        super().setUp()
        self.vkeyd = self.start_vkeyd("--rate-vehicle", "0", "--rate-caller",
                                      "0")
        self.data_dir = os.path.join(self.workdir, "vkeyd-data")

    def bench(self, *args):
        cmd = [binary("vkey-bench"), "--json", "-q", "--data-dir",
               self.data_dir, "--vehicles", "8", "-c", "2", "-m", "8",
               "--server-pid", str(self.vkeyd.proc.pid)] + list(args) + [
               self.vkeyd.target]
        done = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=240)
        for marker in vkharness.SANITIZER_MARKERS:
            self.assertNotIn(marker, done.stderr)
        return done

    def check_prebuilt(self, scenario, n):
        # A window far longer than n requests take: it must end early.
        done = self.bench("-s", scenario, "--prebuild", str(n), "--signers",
                          "2", "-d", "120", "-w", "0")
        self.assertEqual(0, done.returncode, done.stderr)
        result = json.loads(done.stdout)
        signers = result["signers"]
        self.assertEqual(0, result["failed"], result)
        self.assertTrue(signers["ran_out"], signers)
        self.assertEqual(n, signers["prebuilt"])
        self.assertEqual(0, signers["built"])  # nothing signed in the window
        self.assertEqual(0, signers["stale"])
        self.assertLess(result["elapsed_s"], 120)
        # Every request the window took was answered or still in flight
        # when it ended (as at a timed window's end).
        self.assertEqual(result["ok"] + result["unfinished"], signers["sent"])
        self.assertGreater(signers["sent"], 0)
        self.assertLessEqual(signers["sent"], n)
        return result

    def test_prebuilt_status_checks_are_all_accepted(self):
        self.check_prebuilt("check", 3000)

    def test_prebuilt_verifications_are_all_allowed(self):
        # The scenario checks each answer: an item denied (a stale proof,
        # a challenge not bound to its call) counts as failed.
        self.check_prebuilt("verify", 600)

    def test_too_few_for_the_warmup_fails_the_run(self):
        done = self.bench("-s", "check", "--prebuild", "5", "-d", "5", "-w",
                          "30")
        self.assertEqual(2, done.returncode, done.stderr)
        self.assertIn("ran out before the measured window", done.stderr)


if __name__ == "__main__":
    unittest.main()
