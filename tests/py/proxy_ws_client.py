"""WebSocket clients (python `websockets`) through sbx-proxy.

Usage: proxy_ws_client.py <check> <url> [--ca FILE] [--header 'K: V']... [options]

Host names under .sbx.test and .local resolve to 127.0.0.1 (the proxy's
listeners in the host namespace). Checks, each printing JSON or `ok ...`
lines and exiting non-zero on failure:

- `echo`: text and binary round trips (plus `--big-mib N` of binary), then
  prints what the service saw of the upgrade request (path, headers).
- `status`: the handshake must be refused with HTTP `--expect N`; prints the
  response body.
- `tunnel`: the agent's TCP tunnel to a `tcp-upper` service: bytes come back
  upper-cased, in binary frames.
- `abandon`: opens `--count` connections, checks each echoes, then exits
  without closing them (the kernel closes the sockets: a client that died);
- `open`: asks the service how many connections it has open until that is
  `--expect` (or 15 s pass); prints the count;
- `pty`: `<url>` is the management base URL (https://web.sbx.test:P); creates
  a PTY over HTTP, attaches its WebSocket, runs a shell and reads its exit code.
"""

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

_getaddrinfo = socket.getaddrinfo


def _resolve(host, *args, **kwargs):
    if isinstance(host, str) and (host.endswith(".sbx.test") or host.endswith(".local")):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _resolve


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("check")
    p.add_argument("url")
    p.add_argument("--ca")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--big-mib", type=int, default=0)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    return p.parse_args()


ARGS = parse()
HEADERS = [tuple(h.split(": ", 1)) for h in ARGS.header]


def ssl_context():
    if ARGS.url.startswith(("wss:", "https:")):
        return ssl.create_default_context(cafile=ARGS.ca)
    return None


def ws(url):
    kwargs = {"additional_headers": HEADERS, "max_size": None, "compression": None,
              "open_timeout": 20, "ping_interval": None}
    if url.startswith("wss:"):
        kwargs["ssl"] = ssl_context()
    return connect(url, **kwargs)


async def recv_exactly(conn, n, timeout=30):
    got = bytearray()
    while len(got) < n:
        frame = await asyncio.wait_for(conn.recv(), timeout)
        assert isinstance(frame, bytes), f"expected binary, got {type(frame)}"
        got += frame
    return bytes(got)


async def echo():
    async with ws(ARGS.url) as conn:
        await conn.send("hello through the proxy")
        assert await asyncio.wait_for(conn.recv(), 20) == "hello through the proxy"
        payload = bytes(range(256)) * 64
        await conn.send(payload)
        assert await asyncio.wait_for(conn.recv(), 20) == payload
        print("ok small text and binary echo", flush=True)
        if ARGS.big_mib:
            big = (bytes(range(251)) * ((ARGS.big_mib << 20) // 251 + 1))[: ARGS.big_mib << 20]
            started = time.monotonic()
            await conn.send(big)
            back = await asyncio.wait_for(conn.recv(), 120)
            assert isinstance(back, bytes) and len(back) == len(big), f"got {len(back)} bytes"
            assert back == big, "big message differs"
            print(f"ok {ARGS.big_mib} MiB message echoed in {time.monotonic() - started:.2f}s", flush=True)
        await conn.send("__request__")
        seen = json.loads(await asyncio.wait_for(conn.recv(), 20))
        print(json.dumps(seen), flush=True)


async def status():
    try:
        async with ws(ARGS.url):
            pass
    except InvalidStatus as e:
        code = e.response.status_code
        assert code == ARGS.expect, f"expected {ARGS.expect}, got {code}: {e.response.body!r}"
        print(json.dumps({"status": code, "body": (e.response.body or b"").decode(errors="replace")}))
        return
    raise AssertionError(f"handshake succeeded, expected {ARGS.expect}")


async def abandon():
    import os

    conns = [await ws(ARGS.url).__aenter__() for _ in range(ARGS.count)]
    for conn in conns:
        await conn.send("__open__")
        await asyncio.wait_for(conn.recv(), 20)
    print(f"ok {len(conns)} connections open, leaving without a close", flush=True)
    os._exit(0)


async def count_open():
    deadline = time.monotonic() + 15
    async with ws(ARGS.url) as conn:
        while True:
            await conn.send("__open__")
            n = int(await asyncio.wait_for(conn.recv(), 20))
            if n == ARGS.expect or time.monotonic() > deadline:
                print(n, flush=True)
                return
            await asyncio.sleep(0.2)


async def tunnel():
    async with ws(ARGS.url) as conn:
        for payload in (b"through the proxy tunnel", bytes(range(97, 123)) * 40000):
            await conn.send(payload)
            back = await recv_exactly(conn, len(payload))
            assert back == payload.upper(), "tunnel bytes differ"
        print("ok tunnel echo (upper-cased) 1 MiB", flush=True)
        # A Close is a half-close: the service sees EOF and closes too.
        await conn.close()
        print("ok tunnel closed", flush=True)


async def pty():
    headers = dict(HEADERS)
    with httpx.Client(verify=ssl_context() or True, timeout=20) as http:
        r = http.post(
            ARGS.url + "/api/v1/pty",
            headers=headers,
            json={"command": "sh", "rows": 30, "cols": 100, "env": {"PS1": "$ "}},
        )
        assert r.status_code == 201, f"POST /pty: {r.status_code} {r.text}"
        session = r.json()
    base = ARGS.url.replace("https:", "wss:", 1).replace("http:", "ws:", 1)
    url = f"{base}/api/v1/pty/{session['session_id']}/ws?token={session['token']}"
    async with ws(url) as conn:
        await conn.send(b"\x02")
        await conn.send(b"\x00stty size; echo pty-$((6*7))\n")
        text = ""
        deadline = time.monotonic() + 20
        while not ("pty-42" in text and "30 100" in text):
            assert time.monotonic() < deadline, f"no PTY output: {text!r}"
            frame = await asyncio.wait_for(conn.recv(), 20)
            if frame[:1] == b"\x00":
                text += frame[1:].decode(errors="replace")
        print("ok pty output", flush=True)
        await conn.send(b"\x00exit 3\n")
        code = None
        try:
            while True:
                frame = await asyncio.wait_for(conn.recv(), 20)
                if frame[:1] == b"\x03":
                    code = int.from_bytes(frame[1:5], "big", signed=True)
        except ConnectionClosed as closed:
            reason = closed.rcvd.reason if closed.rcvd else ""
        assert code == 3, f"exit code {code}"
        assert reason == "exit:3", f"close reason {reason!r}"
        print("ok pty exit 3", flush=True)


CHECKS = {"echo": echo, "status": status, "tunnel": tunnel, "pty": pty, "abandon": abandon, "open": count_open}
asyncio.run(CHECKS[ARGS.check]())
