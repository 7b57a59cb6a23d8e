"""``api/greenlets.py``: under gevent, redis-py's zero-timeout readiness check uses the OS's
poll (no hub round trip) while a poll that may wait stays cooperative; greenlets stop
recording their spawning stack. Run in a subprocess: monkey-patching is process-wide."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import socket, time
import gevent
from gevent import config
from redis._parsers import hiredis
from taskplane.api import greenlets

done = greenlets.tune()
assert done == {"greenlet_tree": True, "redis_poll": True}, done
assert config.track_greenlet_tree is False
assert gevent.spawn(lambda: None).spawning_stack is None

a, b = socket.socketpair()
# the parser's own checks, through the tuned module
assert hiredis._socket_can_read(a, 0) is False
b.sendall(b"x")
assert hiredis._socket_can_read(a, 0) is True
assert hiredis._socket_is_closed(a) is False
a.recv(1)
# a poll that waits still lets other greenlets run meanwhile (it is gevent's)
ran = []
def later():
    ran.append(1)
    b.sendall(b"y")
gevent.spawn_later(0.05, later)
start = time.monotonic()
assert hiredis._socket_can_read(a, 2.0) is True
assert ran and time.monotonic() - start < 1.5
b.close()
a.recv(1)
assert hiredis._socket_is_closed(a) is True
print("ok")
"""


def test_tune_under_gevent() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_tune_does_nothing_without_gevent_patching() -> None:
    script = ("from taskplane.api import greenlets\n"
              "print(greenlets.tune())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert "'redis_poll': False" in done.stdout and "'greenlet_tree': False" in done.stdout
