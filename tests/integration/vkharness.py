"""Shared harness for vkey's integration tests.

Starts the real binaries (vkeyd, vkey-interop-server) and a real
redis-server on free loopback ports, each in its own temporary directory,
and checks on shutdown that the process exited cleanly (exit 0 after
SIGTERM) and that ASan/UBSan/LSan reported nothing.

Environment (set by ctest, see tests/CMakeLists.txt): VK_BUILD_DIR,
VK_SOURCE_DIR, PYTHONPATH including the generated stubs.
"""

import os
import shutil
import signal as _signal
import socket
import subprocess
import tempfile
import time
import unittest

BUILD_DIR = os.environ.get("VK_BUILD_DIR", "build")
GEN_PYTHON = os.path.join(BUILD_DIR, "gen", "python")

# The generated stubs for grpc/health, grpc/reflection and grpc/testing live
# in a package named "grpc", which grpcio already owns: graft ours onto its
# package path so "from grpc.health.v1 import health_pb2" works.
import grpc  # noqa: E402

_GEN_GRPC = os.path.join(GEN_PYTHON, "grpc")
if os.path.isdir(_GEN_GRPC) and _GEN_GRPC not in grpc.__path__:
    grpc.__path__.append(_GEN_GRPC)
SOURCE_DIR = os.environ.get("VK_SOURCE_DIR", ".")
SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
)


def binary(name):
    """Path of a binary built in the build tree."""
    for sub in ("server", "bench", "tests", "."):
        path = os.path.join(BUILD_DIR, sub, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{name} not built under {BUILD_DIR}")


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc=None, timeout=30.0, host="127.0.0.1"):
    """Wait until something accepts on host:port, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def wait_for_serving(target, proc=None, timeout=30.0):
    """Wait until vkeyd's health says SERVING (it listens before Redis is
    connected, and answers UNAVAILABLE until then)."""
    from grpc.health.v1 import health_pb2, health_pb2_grpc
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{target} did not become SERVING")


class Process:
    """A child process whose stderr goes to a log file we can read."""

    def __init__(self, args, workdir, name, env=None):
        self.args = args
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        full_env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir,
            env=full_env)

    def log(self):
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=_signal.SIGTERM, timeout=30.0):
        """Signal the process and wait; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"{self.name} did not exit within {timeout}s of {sig}:\n"
                    + self.log()[-4000:])
        self._log.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def sanitizer_report(self):
        text = self.log()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                return text
        return None


class ServerTestCase(unittest.TestCase):
    """Base class: a temp dir per test and clean shutdown checks."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="vkey-test-")
        self._procs = []

    def tearDown(self):
        failures = []
        for p in reversed(self._procs):
            if p.alive():
                code = p.stop()
                if code != 0 and p.name != "redis":
                    failures.append(f"{p.name} exited {code}:\n{p.log()[-4000:]}")
            report = p.sanitizer_report()
            if report:
                failures.append(f"{p.name} sanitizer report:\n{report[-6000:]}")
        if not failures:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if failures:
            self.fail("\n".join(failures))

    def spawn(self, args, name, env=None):
        p = Process(args, self.workdir, name, env)
        self._procs.append(p)
        # tearDown stops it and checks how it exited; this only catches a
        # setUp that failed after spawning, when tearDown does not run.
        self.addCleanup(p.kill)
        return p

    def start_redis(self):
        """A real redis-server on a free port, AOF on. Returns (proc, url)."""
        port = free_port()
        data = os.path.join(self.workdir, "redis")
        os.makedirs(data, exist_ok=True)
        p = self.spawn(["redis-server", "--port", str(port), "--bind",
                        "127.0.0.1", "--dir", data, "--appendonly", "yes",
                        "--save", ""], "redis")
        wait_for_port(port, p.proc)
        p.port = port
        return p, f"redis://127.0.0.1:{port}"

    def start_vkeyd(self, *extra, redis_url=None, name="vkeyd", env=None,
                    wait_serving=True):
        """vkeyd on a free port; with no redis_url it embeds its own Redis."""
        port = free_port()
        args = [binary("vkeyd"), "--listen", f"127.0.0.1:{port}",
                "--data-dir", os.path.join(self.workdir, name + "-data")]
        if redis_url:
            args += ["--redis", redis_url]
        args += list(extra)
        p = self.spawn(args, name, env)
        wait_for_port(port, p.proc)
        p.port = port
        p.target = f"127.0.0.1:{port}"
        if wait_serving:
            wait_for_serving(p.target, p.proc)
        return p

    def start_interop(self, *extra, name="interop"):
        port = free_port()
        p = self.spawn([binary("vkey-interop-server"), "--port", str(port)]
                       + list(extra), name)
        wait_for_port(port, p.proc)
        p.port = port
        p.target = f"127.0.0.1:{port}"
        return p
