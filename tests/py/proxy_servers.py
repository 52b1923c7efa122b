"""Services the proxy tests start inside a sandbox namespace.

Usage: proxy_servers.py <kind> <port> [name]

Every server binds 127.0.0.1 only (the sandbox's loopback: reachable from
outside solely through the agent) and prints `ready <kind> <port>` once it
listens. Kinds:

- `echo`: HTTP/1.1. Any request is answered with JSON describing what
  arrived: the raw request target, the request line, every header in order,
  and the body's length and SHA-256. `/_/slow?ms=N` waits first, `/_/sse`
  streams `n` events `gap_ms` apart.
- `ws`: WebSocket echo (any size). The text message `__request__` is answered
  with the upgrade request's path and headers as JSON, `__open__` with the
  number of connections open now.
- `tcp-upper`: raw TCP; answers each connection's bytes upper-cased, and
  half-closes when the client does.
- `grpc`: gRPC (grpcio, generic handlers, bytes in and out): service
  `test.Echo` with `Unary`, `Stream` (server streaming), `Chat` (bidirectional,
  one answer per message as it arrives), `Big` (a large response) and `Fail`
  (an error status with details and trailing metadata).
"""

import hashlib
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

KIND, PORT = sys.argv[1], int(sys.argv[2])
NAME = sys.argv[3] if len(sys.argv) > 3 else "service"


def ready():
    print(f"ready {KIND} {PORT}", flush=True)


# ---------------------------------------------------------------- HTTP echo


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        digest = hashlib.sha256()
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        raise ConnectionError("body cut short")
                    digest.update(chunk)
                    total += len(chunk)
                    left -= len(chunk)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    raise ConnectionError("body cut short")
                digest.update(chunk)
                total += len(chunk)
                left -= len(chunk)
        return total, digest.hexdigest()

    def handle_any(self):
        body_len, body_sha = self.read_body()
        target = self.requestline.split(" ")[1] if " " in self.requestline else ""
        query = parse_qs(urlsplit(target).query)
        if target.startswith("/_/slow"):
            time.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
        if target.startswith("/_/sse"):
            return self.sse(int(query.get("n", ["2"])[0]), int(query.get("gap_ms", ["1000"])[0]))
        answer = json.dumps(
            {
                "server": NAME,
                "method": self.command,
                "target": target,
                "request_line": self.requestline,
                "version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_len": body_len,
                "body_sha256": body_sha,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("X-Echo-Server", NAME)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    def sse(self, n, gap_ms):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for i in range(n):
            self.wfile.write(f"data: event-{i}\n\n".encode())
            self.wfile.flush()
            if i + 1 < n:
                time.sleep(gap_ms / 1000)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


def serve_echo():
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 256
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Echo)
    ready()
    server.serve_forever()


# ---------------------------------------------------------------- WebSocket


def serve_ws():
    import asyncio

    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    open_connections = set()

    async def handler(ws):
        open_connections.add(ws)
        try:
            await serve_one(ws)
        except ConnectionClosed:
            pass  # a client that went away without a close frame
        finally:
            open_connections.discard(ws)

    async def serve_one(ws):
        async for message in ws:
            if message == "__open__":
                await ws.send(str(len(open_connections)))
                continue
            if message == "__request__":
                await ws.send(
                    json.dumps(
                        {
                            "server": NAME,
                            "path": ws.request.path,
                            "headers": [[k, v] for k, v in ws.request.headers.raw_items()],
                        }
                    )
                )
            else:
                await ws.send(message)

    async def main():
        async with serve(handler, "127.0.0.1", PORT, max_size=None, compression=None):
            ready()
            await asyncio.Future()

    asyncio.run(main())


# ---------------------------------------------------------------- raw TCP


def serve_tcp_upper():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", PORT))
    server.listen(128)
    ready()

    def one(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data.upper())
            conn.shutdown(socket.SHUT_WR)

    while True:
        conn, _ = server.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


# ---------------------------------------------------------------- gRPC


def serve_grpc():
    from concurrent import futures

    import grpc

    def unary(request, context):
        md = dict(context.invocation_metadata())
        context.set_trailing_metadata((("x-trailer", "unary-done"), ("x-bin-bin", b"\x00\x01\xff")))
        answer = {"echo": request.decode(errors="replace"), "server": NAME, "metadata": md}
        return json.dumps(answer).encode()

    def stream(request, context):
        count = int(request.decode() or "3")
        for i in range(count):
            yield f"item-{i}".encode()
            time.sleep(0.05)
        context.set_trailing_metadata((("x-trailer", f"streamed-{count}"),))

    def fail(request, context):
        context.set_trailing_metadata((("x-reason", "on-purpose"),))
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied: " + request.decode(errors="replace"))

    def chat(request_iterator, context):
        for message in request_iterator:
            yield b"echo:" + message

    def big(request, context):
        return bytes(range(256)) * (int(request.decode()) // 256)

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Big": grpc.unary_unary_rpc_method_handler(big),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{PORT}")
    server.start()
    ready()
    server.wait_for_termination()


{
    "echo": serve_echo,
    "ws": serve_ws,
    "tcp-upper": serve_tcp_upper,
    "grpc": serve_grpc,
}[KIND]()
