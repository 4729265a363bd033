"""Run a piece of the controller inside a network namespace.

Only the calling thread moves (setns), and only for the body: netlink
sockets and BPF link calls made there act on that namespace's interfaces,
while the process keeps its mount namespace, and with it /sys/fs/bpf.
"""

from contextlib import contextmanager

from pyroute2 import netns as pyroute2_netns


@contextmanager
def inside_netns(name: str | None):
    """Run the body in network namespace `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    pyroute2_netns.pushns(name)
    try:
        yield
    finally:
        pyroute2_netns.popns()
