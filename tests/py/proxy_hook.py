"""A fake control plane for sbx-proxy's lifecycle hook (SPEC 6, auto-resume).

Usage: proxy_hook.py <port> <admin-socket> <mode>

Listens on 127.0.0.1:<port> (in the proxy's host namespace) and prints
`ready`. POST /hook records the JSON body; then, by mode:

- `<ms>`: answers 202, and after <ms> milliseconds marks the sandbox
  `running` (resume) or `suspended` (suspend) in the proxy's registry (PATCH
  over the admin socket), as a control plane would once the VM has changed;
- `never`: answers 202 and does nothing;
- `fail`: answers 500.
- `sbx-host=<socket>`: answers 202, asks sbx-host on <socket> to suspend or
  resume the sandbox (POST /v1/sandboxes/<id>/<action>), and once sbx-host
  has answered 200 marks it in the proxy's registry: the control plane
  this project's sbx-host and the proxy make together, until the proxy
  calls sbx-host itself.

GET /calls answers {"calls": [<every body received>]}.
"""

import http.client
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, ADMIN, MODE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
CALLS = []
LOCK = threading.Lock()


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, host, path=ADMIN):
        super().__init__(host, timeout=120)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def through_sbx_host(socket_path, sandbox_id, action, status):
    conn = UnixConnection("sbx-host", socket_path)
    conn.request("POST", f"/v1/sandboxes/{sandbox_id}/{action}")
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        print(f"sbx-host {action} {sandbox_id}: {resp.status} {body!r}", file=sys.stderr, flush=True)
        return
    mark(sandbox_id, status, 0)


def mark(sandbox_id, status, delay_ms):
    time.sleep(delay_ms / 1000)
    conn = UnixConnection("admin")
    conn.request(
        "PATCH",
        f"/v1/sandboxes/{sandbox_id}",
        body=json.dumps({"status": status}),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200, (resp.status, resp.read())


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            self.answer(200, {"calls": list(CALLS)})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        with LOCK:
            CALLS.append(body)
        if MODE == "fail":
            return self.answer(500, {"error": "the control plane is down"})
        if MODE != "never" and isinstance(body, dict):
            status = {"resume": "running", "suspend": "suspended"}.get(body.get("action"))
            if status and MODE.startswith("sbx-host="):
                args = (MODE.split("=", 1)[1], body["sandbox_id"], body["action"], status)
                threading.Thread(target=through_sbx_host, args=args, daemon=True).start()
            elif status:
                args = (body["sandbox_id"], status, int(MODE))
                threading.Thread(target=mark, args=args, daemon=True).start()
        self.answer(202, {})


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", PORT), Hook)
print("ready", flush=True)
server.serve_forever()
