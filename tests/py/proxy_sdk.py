"""The public Tensorlake SDK through sbx-proxy with an API key.

Usage: proxy_sdk.py <proxy-url> <sandbox-id-or-name> <api-key> <scratch-dir> <tcp-upper-port>

With a localhost proxy URL the SDK sends `Host: <id>.local`; with any other
URL it sends `X-Tensorlake-Sandbox-Id`. Either way the proxy must route,
authenticate and forward: run, files, the TCP tunnel (to the `tcp-upper`
service inside the sandbox) and a PTY. Prints `ok <check>` per check.
"""

import os
import socket
import sys
import threading
import time

from tensorlake.sandbox import Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError, SandboxError

url, ident, api_key, scratch, tcp_port = sys.argv[1:6]
sbx = Sandbox(identifier=ident, proxy_url=url, api_key=api_key)


def check(name, fn):
    started = time.monotonic()
    fn()
    print(f"ok {name} ({(time.monotonic() - started) * 1000:.0f} ms)", flush=True)


def health_and_run():
    assert sbx.health().healthy is True
    assert sbx.daemon_info().version
    r = sbx.run("sh", ["-c", "echo out1; echo err1 >&2; echo out2; exit 7"])
    assert r.exit_code == 7, r
    assert r.stdout == "out1\nout2", repr(r.stdout)
    assert r.stderr == "err1", repr(r.stderr)
    p = sbx.start_process("sh", ["-c", "for i in 1 2 3; do echo line$i; sleep 0.1; done"])
    assert [e.line for e in sbx.follow_stdout(p.pid)] == ["line1", "line2", "line3"]


def files():
    base = os.path.join(scratch, "sdk-proxy-files")
    path = os.path.join(base, "nested", "blob.bin")
    payload = os.urandom(3 << 20)
    sbx.write_file(path, payload)
    assert sbx.read_file(path).value == payload
    listing = sbx.list_directory(base)
    assert [(e.name, e.is_dir) for e in listing.entries] == [("nested", True)], listing
    sbx.delete_file(path)
    try:
        sbx.read_file(path)
    except (RemoteAPIError, SandboxError) as e:
        assert "404" in str(e) or getattr(e, "status_code", None) == 404, e
    else:
        raise AssertionError("deleted file still readable")


def tunnel():
    with sbx.create_tunnel(int(tcp_port), local_port=0) as t:
        for _ in range(2):  # two connections over the same tunnel listener
            with socket.create_connection((t.local_host, t.local_port), timeout=20) as c:
                c.sendall(b"through the proxy and the tunnel")
                c.shutdown(socket.SHUT_WR)
                got = b""
                while True:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            assert got == b"THROUGH THE PROXY AND THE TUNNEL", got


def pty():
    received = bytearray()
    lock = threading.Lock()

    def on_data(data):
        with lock:
            received.extend(data)

    term = sbx.create_pty("sh", rows=30, cols=100, on_data=on_data)
    term.send_input("stty size; echo pty-$((6*7))\n")
    deadline = time.monotonic() + 20
    while True:
        with lock:
            text = received.decode(errors="replace")
        if "pty-42" in text and "30 100" in text:
            break
        assert time.monotonic() < deadline, f"no PTY output: {text!r}"
        time.sleep(0.05)
    term.send_input("exit 3\n")
    assert term.wait(timeout=20) == 3


for name, fn in [("health_and_run", health_and_run), ("files", files), ("tunnel", tunnel), ("pty", pty)]:
    check(name, fn)
print("all SDK-through-proxy checks passed", flush=True)
