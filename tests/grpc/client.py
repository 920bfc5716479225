#!/usr/bin/env python3
"""Real gRPC client for keygate's integration tests (talks to echo_server.py).

No protoc/codegen: methods of `keygate.test.Echo` are invoked generically and
every message is raw bytes holding UTF-8 JSON. Plaintext h2c channel.

Usage: python3 tests/grpc/client.py --target HOST:PORT
           --call unary|server_stream|client_stream|bidi|fail
           [--metadata key=value]... [--count N] [--timeout SECONDS]
           [--repeat N] [--wait-ready SECONDS]

Keys are lowercased; "-bin" keys take (and are reported as) base64 values.

Prints one JSON line per call (per repetition; all repetitions share one
channel, normally one HTTP/2 connection):
  {"ok": true, "responses": [...], "initial_metadata": {...},
   "trailing_metadata": {...}}
  {"ok": false, "code": "NOT_FOUND", "code_number": 5, "details": "...",
   "initial_metadata": {...}, "trailing_metadata": {...}}
Exits 0 either way; non-zero only for usage errors or bugs.
"""

import argparse
import base64
import json
import queue
import sys

import grpc

SERVICE = "/keygate.test.Echo/"
DONE = object()


def encode(obj):
    return json.dumps(obj).encode("utf-8")


def decode(raw):
    return json.loads(raw.decode("utf-8"))


def metadata_dict(metadata):
    """Metadata tuples -> dict; -bin values base64, repeated keys joined by ', '."""
    out = {}
    for key, value in metadata or ():
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def unary(channel, kw, args, method="Unary"):
    rpc = channel.unary_unary(SERVICE + method)
    response, call = rpc.with_call(encode({"hello": "world"}), **kw)
    return [decode(response)], call


def fail(channel, kw, args):
    return unary(channel, kw, args, method="Fail")


def server_stream(channel, kw, args):
    call = channel.unary_stream(SERVICE + "ServerStream")(encode({"count": args.count}), **kw)
    return [decode(raw) for raw in call], call


def client_stream(channel, kw, args):
    rpc = channel.stream_unary(SERVICE + "ClientStream")
    requests = (encode({"n": i}) for i in range(args.count))
    response, call = rpc.with_call(requests, **kw)
    return [decode(response)], call


def bidi(channel, kw, args):
    """Send {"n": i} one at a time; the next is sent only after reading a reply."""
    outbox = queue.Queue()

    def requests():
        while (item := outbox.get()) is not DONE:
            yield item

    call = channel.stream_stream(SERVICE + "Bidi")(requests(), **kw)
    responses = []
    try:
        if args.count == 0:
            outbox.put(DONE)
        else:
            outbox.put(encode({"n": 0}))
        for raw in call:
            responses.append(decode(raw))
            sent = len(responses)
            outbox.put(encode({"n": sent}) if sent < args.count else DONE)
    finally:
        outbox.put(DONE)  # never leave the request thread blocked
    return responses, call


CALLS = {
    "unary": unary,
    "server_stream": server_stream,
    "client_stream": client_stream,
    "bidi": bidi,
    "fail": fail,
}


def run_once(channel, kw, args):
    try:
        responses, call = CALLS[args.call](channel, kw, args)
        return {
            "ok": True,
            "responses": responses,
            "initial_metadata": metadata_dict(call.initial_metadata()),
            "trailing_metadata": metadata_dict(call.trailing_metadata()),
        }
    except grpc.RpcError as err:  # also a grpc.Call
        code = err.code()
        return {
            "ok": False,
            "code": code.name,
            "code_number": code.value[0],
            "details": err.details(),
            "initial_metadata": metadata_dict(err.initial_metadata()),
            "trailing_metadata": metadata_dict(err.trailing_metadata()),
        }


def parse_metadata(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key = key.lower()
    if key.endswith("-bin"):  # binary metadata: value given as base64
        return key, base64.b64decode(value)
    return key, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--call", required=True, choices=sorted(CALLS))
    parser.add_argument("--metadata", type=parse_metadata, action="append", default=[])
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--wait-ready", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--service", default="keygate.test.Echo",
                        help="the service whose methods are called")
    args = parser.parse_args()
    global SERVICE
    SERVICE = f"/{args.service}/"

    kw = {"timeout": args.timeout, "metadata": args.metadata or None}
    with grpc.insecure_channel(args.target) as channel:
        if args.wait_ready is not None:
            try:
                grpc.channel_ready_future(channel).result(timeout=args.wait_ready)
            except grpc.FutureTimeoutError:
                print(f"client: {args.target} not ready after {args.wait_ready}s",
                      file=sys.stderr)  # carry on: the call reports UNAVAILABLE
        for _ in range(args.repeat):
            print(json.dumps(run_once(channel, kw, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
