"""The official gRPC Ruby interop client (Debian's ruby-grpc) against
vkey-interop-server: one subTest per test case the client supports, each
run as its own `ruby client.rb` process that must exit 0."""

import glob
import re
import subprocess
import sys
import time
import unittest

import vkharness

CASES = (
    "empty_unary", "large_unary", "client_streaming", "server_streaming",
    "ping_pong", "empty_stream", "cancel_after_begin",
    "cancel_after_first_response", "timeout_on_sleeping_server",
    "status_code_and_message", "custom_metadata", "unimplemented_method",
    "unimplemented_service", "client_compressed_unary",
    "client_compressed_streaming",
)
CASE_TIMEOUT = 120  # seconds for one client run


def find_client():
    """The newest ruby-grpc interop client.rb installed, or None."""
    patterns = (
        "/usr/lib/*/rubygems-integration/*/gems/grpc-*/src/ruby/pb/test/"
        "client.rb",
        "/usr/share/rubygems-integration/*/gems/grpc-*/src/ruby/pb/test/"
        "client.rb",
        "/var/lib/gems/*/gems/grpc-*/src/ruby/pb/test/client.rb",
    )

    def version(path):
        m = re.search(r"/grpc-([0-9.]+)/", path)
        return tuple(int(x) for x in m.group(1).split(".") if x) if m else ()

    found = [p for pat in patterns for p in glob.glob(pat)]
    return max(found, key=version) if found else None


def supported_cases(client):
    """The test cases client.rb defines (its NamedTests methods)."""
    with open(client, encoding="utf-8") as f:
        defined = set(re.findall(r"^\s*def (\w+)\s*$", f.read(), re.M))
    return [c for c in CASES if c in defined]


class RubyInteropTest(vkharness.ServerTestCase):

    def test_ruby_client(self):
        client = find_client()
        if client is None:
            self.skipTest("ruby-grpc's interop client.rb is not installed")
        cases = supported_cases(client)
        self.assertTrue(cases, f"no known test case in {client}")
        server = self.start_interop()
        for case in cases:
            with self.subTest(case=case):
                args = ["ruby", client, "--server_host=127.0.0.1",
                        f"--server_port={server.port}", "--use_tls=false",
                        f"--test_case={case}"]
                start = time.monotonic()
                try:
                    run = subprocess.run(
                        args, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, timeout=CASE_TIMEOUT,
                        cwd=self.workdir)
                except subprocess.TimeoutExpired as e:
                    out = (e.output or b"").decode(errors="replace")
                    self.fail(f"{case}: no exit within {CASE_TIMEOUT}s\n"
                              f"{out[-4000:]}")
                out = run.stdout.decode(errors="replace")
                self.assertEqual(
                    run.returncode, 0,
                    f"{case} exited {run.returncode}:\n{out[-4000:]}\n"
                    f"server log:\n{server.log()[-3000:]}")
                print(f"{case}: exit 0 in {time.monotonic() - start:.1f}s",
                      file=sys.stderr)
                self.assertTrue(server.alive(),
                                f"server died during {case}:\n"
                                f"{server.log()[-4000:]}")
        # The server's exit code and sanitizer report: see tearDown.


if __name__ == "__main__":
    unittest.main(verbosity=2)
