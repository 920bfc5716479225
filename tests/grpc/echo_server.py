#!/usr/bin/env python3
"""Real gRPC echo server for keygate's integration tests (a real upstream peer).

No protoc/codegen: the service `keygate.test.Echo` is registered with generic
handlers, so every request/response message is raw bytes holding UTF-8 JSON.

Usage: python3 tests/grpc/echo_server.py --port-file PATH [--port N]

Listens in plaintext (h2c) on 127.0.0.1:N (default 0 = any free port), writes
the bound port to PATH atomically once serving, and runs until SIGTERM/SIGINT.

Methods:
  Unary         unary-unary   -> {"message": <request>, "metadata": {k: v}}
  ServerStream  unary-stream  {"count": N} -> {"i": 0} ... {"i": N-1}
  ClientStream  stream-unary  -> {"count": n, "messages": [...]}
  Bidi          stream-stream each m -> {"echo": m}, as soon as m arrives
  Fail          unary-unary   aborts with NOT_FOUND, details "no such thing"
Each method except Fail sets trailing metadata x-upstream-trailer: <kind>.
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "keygate.test.Echo"


def decode(raw):
    return json.loads(raw.decode("utf-8"))


def encode(obj):
    return json.dumps(obj).encode("utf-8")


def metadata_dict(context):
    out = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, bytes):  # "-bin" keys arrive as raw bytes
            value = base64.b64encode(value).decode("ascii")
        out[key] = value
    return out


def unary(request, context):
    context.set_trailing_metadata((("x-upstream-trailer", "unary"),))
    return encode({"message": decode(request), "metadata": metadata_dict(context)})


def server_stream(request, context):
    context.set_trailing_metadata((("x-upstream-trailer", "server-stream"),))
    for i in range(int(decode(request).get("count", 0))):
        yield encode({"i": i})


def client_stream(request_iterator, context):
    messages = [decode(raw) for raw in request_iterator]
    context.set_trailing_metadata((("x-upstream-trailer", "client-stream"),))
    return encode({"count": len(messages), "messages": messages})


def bidi(request_iterator, context):
    context.set_trailing_metadata((("x-upstream-trailer", "bidi"),))
    for raw in request_iterator:
        yield encode({"echo": decode(raw)})


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })
    # so_reuseport=0: grpcio defaults to SO_REUSEPORT, which would let two
    # servers silently share a fixed --port; we want a bind error instead.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=(("grpc.so_reuseport", 0),))
    server.add_generic_rpc_handlers((handler,))
    try:
        port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    except RuntimeError:
        port = 0
    if port == 0:
        print(f"echo_server: cannot bind 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    server.start()

    tmp = f"{args.port_file}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, args.port_file)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop(grace=0.5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
