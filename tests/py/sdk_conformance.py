"""Drives a real sbx-agent through the public Tensorlake SDK.

Usage: sdk_conformance.py <agent-url> <sandbox-id> <bearer-token> <scratch-dir>

Each check prints `ok <name>`; the first failure raises, and the process
exits non-zero. The Rust test `tests/tests/sdk_conformance.rs` runs this.
"""

import os
import socket
import sys
import threading
import time

from tensorlake.sandbox import Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError, SandboxError

url, sandbox_id, token, scratch = sys.argv[1:5]
sbx = Sandbox(identifier=sandbox_id, proxy_url=url, api_key=token)


def check(name, fn):
    started = time.monotonic()
    fn()
    print(f"ok {name} ({(time.monotonic() - started) * 1000:.0f} ms)", flush=True)


def expect_error(fn, status):
    try:
        fn()
    except RemoteAPIError as e:
        assert e.status_code == status, f"expected {status}, got {e.status_code}: {e}"
        return
    except SandboxError as e:
        assert str(status) in str(e), f"expected {status} in {e!r}"
        return
    raise AssertionError(f"expected an error with status {status}")


def health_and_info():
    assert sbx.health().healthy is True
    info = sbx.daemon_info()
    assert info.version and info.uptime_secs >= 0


def run_command():
    r = sbx.run("sh", ["-c", "echo out1; echo err1 >&2; echo out2; exit 7"])
    assert r.exit_code == 7, r
    assert r.stdout == "out1\nout2", repr(r.stdout)
    assert r.stderr == "err1", repr(r.stderr)
    r = sbx.run("pwd", working_dir="/tmp", env={"X": "1"})
    assert r.exit_code == 0 and r.stdout == "/tmp", r
    r = sbx.run("sh", ["-c", 'echo "$GREETING"'], env={"GREETING": "hello sdk"})
    assert r.stdout == "hello sdk", r


def run_timeout():
    started = time.monotonic()
    r = sbx.run("sleep", ["30"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert r.exit_code == -9, r
    assert r.timed_out, r


def run_as_user():
    r = sbx.run("id", ["-u"], user="nobody")
    if os.geteuid() == 0:
        assert r.exit_code == 0 and r.stdout.strip() != "0", r
    expect_error(lambda: sbx.run("true", user="no-such-user-sbx"), 400)
    # Managed processes (name/restart/health_check) are refused, not ignored.
    expect_error(lambda: sbx.start_process("true", name="web"), 400)


def start_and_follow():
    p = sbx.start_process("sh", ["-c", "for i in 1 2 3; do echo line$i; sleep 0.1; done; echo oops >&2"])
    assert p.pid > 0 and p.status.value == "running", p
    events = list(sbx.follow_output(p.pid))
    lines = [e.line for e in events]
    assert lines[:3] == ["line1", "line2", "line3"], lines
    assert "oops" in lines
    assert [e.line for e in sbx.follow_stdout(p.pid)] == ["line1", "line2", "line3"]
    assert [e.line for e in sbx.follow_stderr(p.pid)] == ["oops"]
    out = sbx.get_stdout(p.pid)
    assert out.lines == ["line1", "line2", "line3"] and out.line_count == 3, out
    assert sbx.get_stderr(p.pid).lines == ["oops"]
    assert len(sbx.get_output(p.pid).lines) == 4
    info = sbx.get_process(p.pid)
    assert info.status.value == "exited" and info.exit_code == 0, info
    assert any(x.pid == p.pid for x in sbx.list_processes())


def stdin_roundtrip():
    p = sbx.start_process("cat", stdin_mode="pipe")
    assert p.stdin_writable
    sbx.write_stdin(p.pid, b"hello stdin\n")
    sbx.write_stdin(p.pid, b"second\n")
    sbx.close_stdin(p.pid)
    lines = [e.line for e in sbx.follow_stdout(p.pid)]
    assert lines == ["hello stdin", "second"], lines
    expect_error(lambda: sbx.write_stdin(p.pid, b"late"), 400)


def signals_and_kill():
    p = sbx.start_process("sleep", ["30"])
    assert sbx.send_signal(p.pid, 15).success
    deadline = time.monotonic() + 5
    while sbx.get_process(p.pid).status.value == "running":
        assert time.monotonic() < deadline, "SIGTERM did not end the process"
        time.sleep(0.05)
    info = sbx.get_process(p.pid)
    assert info.status.value == "signaled" and info.signal == 15, info
    p = sbx.start_process("sleep", ["30"])
    sbx.kill_process(p.pid)
    deadline = time.monotonic() + 5
    while sbx.get_process(p.pid).status.value == "running":
        assert time.monotonic() < deadline, "kill did not end the process"
        time.sleep(0.05)
    assert sbx.get_process(p.pid).signal == 9
    expect_error(lambda: sbx.get_process(999999999), 404)


def files():
    base = os.path.join(scratch, "sdk-files")
    path = os.path.join(base, "nested", "hello.bin")
    payload = bytes(range(256)) * 1000
    sbx.write_file(path, payload)
    assert sbx.read_file(path).value == payload
    local = os.path.join(scratch, "upload-src.bin")
    with open(local, "wb") as f:
        f.write(b"uploaded via upload_file\n" * 4096)
    sbx.upload_file(local, os.path.join(base, "uploaded.txt"))
    assert sbx.read_file(os.path.join(base, "uploaded.txt")).value == open(local, "rb").read()
    listing = sbx.list_directory(base)
    names = [(e.name, e.is_dir) for e in listing.entries]
    assert names == [("nested", True), ("uploaded.txt", False)], names
    assert listing.entries[1].size == 25 * 4096
    sbx.delete_file(path)
    expect_error(lambda: sbx.read_file(path), 404)
    expect_error(lambda: sbx.read_file(base), 400)
    expect_error(lambda: sbx.read_file("/tmp/../etc/passwd"), 403)


def tunnel():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    with sbx.create_tunnel(port, local_port=0) as t:
        with socket.create_connection((t.local_host, t.local_port), timeout=10) as c:
            c.sendall(b"through the tunnel")
            c.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
    assert got == b"THROUGH THE TUNNEL", got


def pty():
    received = bytearray()
    lock = threading.Lock()

    def on_data(data):
        with lock:
            received.extend(data)

    term = sbx.create_pty("sh", rows=30, cols=100, on_data=on_data)
    term.send_input("stty size; echo pty-$((6*7))\n")
    deadline = time.monotonic() + 10
    while True:
        with lock:
            text = received.decode(errors="replace")
        if "pty-42" in text and "30 100" in text:
            break
        assert time.monotonic() < deadline, f"no PTY output: {text!r}"
        time.sleep(0.05)
    term.resize(120, 40)
    term.send_input("stty size; exit 3\n")
    code = term.wait(timeout=10)
    assert code == 3, code
    with lock:
        assert "40 120" in received.decode(errors="replace")


CHECKS = {
    "health_and_info": health_and_info,
    "run_command": run_command,
    "run_timeout": run_timeout,
    "run_as_user": run_as_user,
    "start_and_follow": start_and_follow,
    "stdin_roundtrip": stdin_roundtrip,
    "signals_and_kill": signals_and_kill,
    "files": files,
    "tunnel": tunnel,
    "pty": pty,
}

selected = sys.argv[5:] or list(CHECKS)
for name in selected:
    check(name, CHECKS[name])
print("all SDK checks passed", flush=True)
