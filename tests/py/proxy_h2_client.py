"""Several requests on ONE HTTP/2 connection to sbx-proxy (python `h2`).

Usage: proxy_h2_client.py '<json spec>'

spec: {"port": P, "tls": true, "ca": "/path/ca.pem", "sni": "web.sbx.test",
       "requests": [{"authority": "8080-web.sbx.test", "path": "/x",
                     "headers": [["authorization", "Bearer k"]],
                     "method": "PUT", "body_len": N}, ...]}

With `tls` the connection negotiates ALPN h2 (checked); without it, h2c with
prior knowledge. All requests are sent at once, as concurrent streams, with
a different :authority each if the spec says so: a proxy that routes per
connection instead of per request answers them all from one sandbox.
A request with `body_len` sends that many bytes as its body, as fast as flow
control allows, and stops sending once its response has ended (a server may
answer before reading the body: 401 for an upload without credentials).
Prints {"connections": 1, "alpn": ..., "responses": [{status, headers, body,
sent}]}.
"""

import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events

spec = json.loads(sys.argv[1])
raw = socket.create_connection(("127.0.0.1", spec["port"]), timeout=30)
alpn = None
if spec.get("tls"):
    ctx = ssl.create_default_context(cafile=spec["ca"])
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(raw, server_hostname=spec["sni"])
    alpn = sock.selected_alpn_protocol()
    assert alpn == "h2", f"ALPN chose {alpn!r}, not h2"
else:
    sock = raw

conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
sock.sendall(conn.data_to_send())

scheme = "https" if spec.get("tls") else "http"
streams = {}
for req in spec["requests"]:
    sid = conn.get_next_available_stream_id()
    headers = [
        (":method", req.get("method", "GET")),
        (":scheme", scheme),
        (":authority", req["authority"]),
        (":path", req["path"]),
    ] + [tuple(h) for h in req.get("headers", [])]
    body_len = req.get("body_len")
    if body_len is not None:
        headers.append(("content-length", str(body_len)))
    conn.send_headers(sid, headers, end_stream=body_len is None)
    streams[sid] = {"status": None, "headers": [], "body": b"", "done": False,
                    "left": body_len or 0, "sent": 0}
sock.sendall(conn.data_to_send())

CHUNK = bytes(range(256)) * 64


def pump():
    """Sends request bodies while the flow-control windows allow."""
    for sid, s in streams.items():
        while s["left"] > 0 and not s["done"]:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                break
            n = min(window, s["left"], len(CHUNK))
            s["left"] -= n
            s["sent"] += n
            conn.send_data(sid, CHUNK[:n], end_stream=s["left"] == 0)
            sock.sendall(conn.data_to_send())


pump()

while not all(s["done"] for s in streams.values()):
    data = sock.recv(65536)
    if not data:
        raise SystemExit(f"connection closed early: {streams}")
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived):
            s = streams[event.stream_id]
            for k, v in event.headers:
                if k == ":status":
                    s["status"] = int(v)
                else:
                    s["headers"].append([k, v])
        elif isinstance(event, h2.events.DataReceived):
            streams[event.stream_id]["body"] += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            streams[event.stream_id]["done"] = True
        elif isinstance(event, h2.events.StreamReset):
            s = streams[event.stream_id]
            # RST_STREAM(NO_ERROR) after a complete response only says "stop
            # sending the body"; anything else is a failed stream.
            if not s["done"]:
                s["status"] = -event.error_code
            s["done"] = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            raise SystemExit(f"GOAWAY: {event}")
    pending = conn.data_to_send()
    if pending:
        sock.sendall(pending)
    pump()

conn.close_connection()
sock.sendall(conn.data_to_send())
sock.close()
out = [
    {"status": s["status"], "headers": s["headers"], "body": s["body"].decode(errors="replace"), "sent": s["sent"]}
    for _, s in sorted(streams.items())
]
print(json.dumps({"connections": 1, "alpn": alpn, "responses": out}))
