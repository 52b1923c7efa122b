"""The Tensorlake SDK's SandboxClient against sbx-proxy's sandbox API (SPEC 7).

Usage: proxy_sdk_api.py <api-url> <api-key> <other-api-key> <proxy-http-url>

Cloud form (`SandboxClient(api_url, api_key)`: `/sandboxes`, scoped by the
key) and, with no credential, the namespace form of `for_localhost`
(`/v1/namespaces/default/...`). Lists, gets by id and by name, exposes and
unexposes ports, refuses port 9501, and suspends and resumes through the
lifecycle hook (a fake control plane); after each change of the routing
settings, a request through the proxy's plain listener shows it in force.
Prints `ok <check>` per check.
"""

import sys
import time

import httpx
from tensorlake.sandbox import SandboxClient
from tensorlake.sandbox.exceptions import RemoteAPIError, SandboxError

api_url, api_key, other_key, proxy_url = sys.argv[1:5]
client = SandboxClient(api_url=api_url, api_key=api_key)
local = SandboxClient.for_localhost(api_url=api_url, namespace="default")
other = SandboxClient(api_url=api_url, api_key=other_key)


def through_proxy(host, auth):
    """Status of GET / on the proxy with this Host, with or without the key."""
    headers = {"Host": host}
    if auth:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.get(proxy_url + "/", headers=headers, timeout=20).status_code


def ok(name):
    print(f"ok {name}", flush=True)


def expect_error(fn, *statuses):
    try:
        fn()
    except RemoteAPIError as e:
        assert e.status_code in statuses, f"expected {statuses}, got {e.status_code}: {e}"
        return str(e)
    except SandboxError as e:
        assert any(str(s) in str(e) or "not found" in str(e).lower() for s in statuses), repr(e)
        return str(e)
    raise AssertionError(f"expected an error {statuses}")


# Listing and getting, by id and by name, in both path forms.
for c, form in ((client, "cloud"), (local, "namespace")):
    ids = [s.sandbox_id for s in c.list()]
    assert ids == ["sbx-alpha"], f"{form}: {ids}"
    for ident in ("sbx-alpha", "web"):
        info = c.get(ident)
        assert info.sandbox_id == "sbx-alpha" and info.name == "web", info
        assert info.status.value == "running", info
        assert info.namespace == "default", info
    ok(f"list and get ({form})")

# The cloud form without a credential is refused (the namespace form is
# open only because this test's proxy allows it on loopback).
r = httpx.get(f"{api_url}/sandboxes", timeout=20)
assert r.status_code == 401, (r.status_code, r.text)
ok("cloud form without a credential: 401")

# Another project sees nothing of ours.
assert [s.sandbox_id for s in other.list()] == [], "another project's key lists our sandbox"
expect_error(lambda: other.get("sbx-alpha"), 404)
ok("another project's key: nothing listed, 404")

# Ports: expose (public), refuse 9501 and 0, unexpose the last one.
info = client.expose_ports("sbx-alpha", [8080, 3000], allow_unauthenticated_access=True)
assert info.exposed_ports == [3000, 8080], info
assert info.allow_unauthenticated_access is True, info
# The SDK refuses 9501 and 0 itself; the server must too (raw PATCH).
for ports in ([9501], [0], [70000]):
    r = httpx.patch(
        f"{api_url}/sandboxes/sbx-alpha",
        json={"exposed_ports": ports},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=20,
    )
    assert r.status_code == 400 and "exposed_ports" in r.text, (ports, r.status_code, r.text)
assert client.get("sbx-alpha").exposed_ports == [3000, 8080]
assert through_proxy("8080-web.sbx.test", auth=False) == 200
info = client.unexpose_ports("sbx-alpha", [3000])
assert info.exposed_ports == [8080] and info.allow_unauthenticated_access is True, info
assert through_proxy("3000-web.sbx.test", auth=True) == 403
ok("expose, refuse 9501, 0 and 70000, unexpose one")

# Suspend and resume through the lifecycle hook (the SDK waits and polls).
started = time.monotonic()
client.suspend("web", wait=True, timeout=20, poll_interval=0.2)
assert client.get("sbx-alpha").status.value == "suspended"
client.resume("sbx-alpha", wait=True, timeout=20, poll_interval=0.2)
assert client.get("sbx-alpha").status.value == "running"
ok(f"suspend and resume ({time.monotonic() - started:.1f}s)")

assert through_proxy("8080-web.sbx.test", auth=False) == 200
ok("the resumed sandbox answers through the proxy")

# Unexposing the last port ends public access (what the SDK sends).
info = client.unexpose_ports("sbx-alpha", [8080])
assert info.exposed_ports in ([], None) and info.allow_unauthenticated_access is False, info
assert through_proxy("8080-web.sbx.test", auth=False) == 401
assert through_proxy("8080-web.sbx.test", auth=True) == 403
ok("unexposing the last port ends public access")
