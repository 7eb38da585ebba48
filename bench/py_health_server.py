#!/usr/bin/python3
"""A reference gRPC server for checking vkey-bench itself: grpcio (Debian's
python3-grpcio) serving grpc.health.v1.Health/Check on 127.0.0.1:PORT.

Check answers SERVING for service "", NOT_SERVING for "not-serving", and
NOT_FOUND for any other name, so vkey-bench's error counting can be tested
with --health-service. It is slow (a few thousand calls/s): it checks
correctness, not speed.

usage: /usr/bin/python3 bench/py_health_server.py PORT
The stubs are generated into a temporary directory with protoc and
grpc_python_plugin from /usr/share/grpc-proto (grpc_health may not be
installed).
"""
import os
import subprocess
import sys
import tempfile
from concurrent import futures

PROTO_ROOT = "/usr/share/grpc-proto"
PROTO = "grpc/health/v1/health.proto"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: py_health_server.py PORT")
    port = int(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="vkbench-py-") as tmp:
        # The generated package is "grpc.health.v1": shadowing grpcio's own
        # "grpc" package must not happen, so import grpcio first and graft
        # the generated modules under it.
        import grpc
        gen = os.path.join(tmp, "gen")
        os.makedirs(gen)
        subprocess.run(
            ["protoc", "-I" + PROTO_ROOT, "--python_out=" + gen,
             "--grpc_out=" + gen,
             "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
             os.path.join(PROTO_ROOT, PROTO)],
            check=True)
        import types
        health = types.ModuleType("grpc.health")
        health.__path__ = [os.path.join(gen, "grpc", "health")]
        sys.modules["grpc.health"] = health
        grpc.health = health
        from grpc.health.v1 import health_pb2 as pb2
        from grpc.health.v1 import health_pb2_grpc as pb2_grpc

        class Health(pb2_grpc.HealthServicer):
            def Check(self, request, context):
                if request.service == "":
                    return pb2.HealthCheckResponse(
                        status=pb2.HealthCheckResponse.SERVING)
                if request.service == "not-serving":
                    return pb2.HealthCheckResponse(
                        status=pb2.HealthCheckResponse.NOT_SERVING)
                context.abort(grpc.StatusCode.NOT_FOUND,
                              "unknown service " + request.service)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                             options=[("grpc.max_concurrent_streams", 100)])
        pb2_grpc.add_HealthServicer_to_server(Health(), server)
        if server.add_insecure_port("127.0.0.1:%d" % port) == 0:
            sys.exit("cannot listen on 127.0.0.1:%d" % port)
        server.start()
        print("py_health_server: listening on 127.0.0.1:%d" % port,
              flush=True)
        try:
            server.wait_for_termination()
        except KeyboardInterrupt:
            server.stop(0)


if __name__ == "__main__":
    main()
