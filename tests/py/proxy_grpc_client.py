"""gRPC (grpcio) through sbx-proxy to the `grpc` service in proxy_servers.py.

Usage: proxy_grpc_client.py <tls|h2c> <proxy-port> <authority> <ca.pem> <api-key>

Connects to 127.0.0.1:<proxy-port>; the HTTP/2 :authority (and, with TLS, the
name checked against the certificate) is <authority>, e.g.
`50051-web.sbx.test`. No code generation: the methods take and return bytes.
Prints `ok <check>` per check; the first failure exits non-zero.
"""

import json
import queue
import sys

import grpc

mode, port, authority, ca, api_key = sys.argv[1:6]
target = f"127.0.0.1:{port}"
options = [
    ("grpc.default_authority", authority),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.enable_http_proxy", 0),
]
if mode == "tls":
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    options.append(("grpc.ssl_target_name_override", authority))
    channel = grpc.secure_channel(target, creds, options=options)
else:
    channel = grpc.insecure_channel(target, options=options)

auth = (("authorization", f"Bearer {api_key}"),)
unary = channel.unary_unary("/test.Echo/Unary")
stream = channel.unary_stream("/test.Echo/Stream")
fail = channel.unary_unary("/test.Echo/Fail")
big = channel.unary_unary("/test.Echo/Big")


def ok(name):
    print(f"ok {name}", flush=True)


# Unary, with request metadata passed through and trailing metadata intact.
resp, call = unary.with_call(b"ping", metadata=auth + (("x-custom", "kept"),), timeout=20)
answer = json.loads(resp)
assert answer["echo"] == "ping", answer
assert answer["metadata"].get("x-custom") == "kept", answer
assert "authorization" not in answer["metadata"], f"credential reached the sandbox: {answer}"
trailers = dict(call.trailing_metadata())
assert trailers.get("x-trailer") == "unary-done", trailers
assert trailers.get("x-bin-bin") == b"\x00\x01\xff", trailers
assert call.code() == grpc.StatusCode.OK
ok("unary with trailing metadata")

# Server streaming: every message in order, then the trailers.
call = stream(b"5", metadata=auth, timeout=20)
items = [m.decode() for m in call]
assert items == [f"item-{i}" for i in range(5)], items
assert dict(call.trailing_metadata()).get("x-trailer") == "streamed-5"
assert call.code() == grpc.StatusCode.OK
ok("server streaming")

# A non-OK status with details and trailing metadata.
try:
    fail(b"no way", metadata=auth, timeout=20)
    raise AssertionError("Fail returned OK")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.code()
    assert e.details() == "denied: no way", e.details()
    assert dict(e.trailing_metadata()).get("x-reason") == "on-purpose", e.trailing_metadata()
ok("error status, details and trailers")

# A large message (8 MiB) in one response.
data = big(str(8 << 20).encode(), metadata=auth, timeout=60)
assert data == bytes(range(256)) * ((8 << 20) // 256)
ok("8 MiB response")

# Bidirectional streaming, ping-pong: each answer must arrive before the next
# message is sent, so nothing on the way may hold the request stream back.
chat = channel.stream_stream("/test.Echo/Chat")
outbox = queue.Queue()


def requests():
    while True:
        item = outbox.get()
        if item is None:
            return
        yield item


call = chat(requests(), metadata=auth, timeout=30)
for i in range(5):
    outbox.put(f"m{i}".encode())
    answer = next(call)
    assert answer == f"echo:m{i}".encode(), answer
outbox.put(None)
assert list(call) == []
assert call.code() == grpc.StatusCode.OK
ok("bidirectional streaming, one message at a time")

# Without credentials the proxy refuses: HTTP 401 becomes UNAUTHENTICATED.
try:
    unary(b"anon", timeout=20)
    raise AssertionError("unauthenticated call succeeded")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (e.code(), e.details())
ok("no credentials: UNAUTHENTICATED")
channel.close()
