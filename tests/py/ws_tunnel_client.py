"""A WebSocket client that is not ours (python-websockets) against the tunnel.

Usage: ws_tunnel_client.py <ws-url-with-port-query> <bearer-token>
Checks that binary frames are relayed verbatim and that a text frame closes
the tunnel with 1003. Prints one line per check and exits non-zero on failure.
"""

import asyncio
import inspect
import sys

import websockets


def connect(url, token):
    headers = {"Authorization": f"Bearer {token}"}
    params = inspect.signature(websockets.connect).parameters
    # websockets renamed extra_headers to additional_headers in version 14.
    if "additional_headers" in params:
        return websockets.connect(url, additional_headers=headers, max_size=None)
    return websockets.connect(url, extra_headers=headers, max_size=None)


async def main(url, token):
    payload = bytes(range(256)) * 4096  # 1 MiB
    async with connect(url, token) as ws:
        await ws.send(payload)
        got = b""
        while len(got) < len(payload):
            frame = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(frame, bytes), f"expected binary, got {type(frame)}"
            got += frame
        assert got == payload, "echoed bytes differ"
        print("binary echo ok", len(got))

    async with connect(url, token) as ws:
        await ws.send("text is not allowed")
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except websockets.exceptions.ConnectionClosed as closed:
            code = closed.rcvd.code if getattr(closed, "rcvd", None) else closed.code
            assert code == 1003, f"close code {code}"
            print("text frame closed with", code)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
