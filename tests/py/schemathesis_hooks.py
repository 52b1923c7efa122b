"""Schemathesis hooks for tests/tests/api_schemathesis.rs: keep random input
from doing harm on the machine running the tests.

`before_call` runs on every request schemathesis sends (every phase; the
checks' extra requests are copies of a request that went through it), right
before it goes out:

* a `path` query value the agent would act on (absolute) is moved under the
  scratch directory `SBX_SCRATCH`; values the agent refuses before touching
  the disk (relative, empty) are left as generated, so that refusal is
  tested. `..` segments stay and are refused too (403 PATH_TRAVERSAL);
* a process or PTY `command` becomes `/bin/true` (an absolute path, so no
  `PATH` in `env` can redirect it, and it ignores its arguments), unless it
  is one the agent refuses (empty, with NUL, not a string); `LD_*` variables
  are dropped from `env`. A process started (not `run`) with its stdin a
  pipe becomes `/bin/cat` without arguments instead: it runs until its stdin
  is closed or it is killed, so writing to its stdin, signalling and killing
  a running process are exercised too.

Everything else (arguments, environment, user, modes, sizes, timeouts, pids,
session ids, ports) stays as generated. The agent also runs as `nobody` in a
network namespace of its own, so even a miss here could not reach beyond
world-writable files or this namespace's loopback.
"""

import os

import schemathesis

SCRATCH = os.environ["SBX_SCRATCH"].rstrip("/")
SAFE_COMMAND = "/bin/true"
COMMAND_PATHS = ("/api/v1/processes", "/api/v1/processes/run", "/api/v1/pty")


def confine(value):
    """A `path` value moved under the scratch directory when absolute (once:
    a check may send the same case again)."""
    if isinstance(value, list):
        return [confine(v) for v in value]
    text = value if isinstance(value, str) else str(value)
    if text == SCRATCH or text.startswith(SCRATCH + "/"):
        return text
    if text.startswith("/"):
        return SCRATCH + "/" + text.lstrip("/")
    return text


def pin_command(path, body):
    if not isinstance(body, dict):
        return
    command = body.get("command")
    if isinstance(command, str) and command and "\0" not in command:
        if path == "/api/v1/processes" and body.get("stdin_mode") == "pipe":
            body["command"] = "/bin/cat"
            body["args"] = []
        else:
            body["command"] = SAFE_COMMAND
    env = body.get("env")
    if isinstance(env, dict):
        for key in [k for k in env if isinstance(k, str) and k.startswith("LD_")]:
            del env[key]


@schemathesis.hook
def before_call(ctx, case, kwargs):
    if case.query and "path" in case.query:
        case.query["path"] = confine(case.query["path"])
    if case.method.upper() == "POST" and case.path in COMMAND_PATHS:
        pin_command(case.path, case.body)
