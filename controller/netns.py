# SPDX-License-Identifier: GPL-2.0-only
"""Run a piece of the controller inside a network namespace.

Only the calling thread moves (setns), and only for the body: netlink
sockets and BPF link calls made there act on that namespace's interfaces,
while the process keeps its mount namespace, and with it /sys/fs/bpf.

A named namespace is only ever entered, never created here: pyroute2's
pushns opens /run/netns/<name> with O_CREAT, so a typo in `--netns` used to
leave a new, empty namespace behind. Named namespaces are created by `ip
netns add` (or the lab, through pyroute2's netns.create) and nowhere else.
The one kind made here, private_netns(), has no name: nothing outside the
process can enter it, and it goes when the process does.
"""

import ctypes
import os
from contextlib import contextmanager

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Exception):
    pass


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def netns_exists(name: str) -> bool:
    return "/" not in name and name not in ("", ".", "..") and os.path.isfile(netns_path(name))


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"cannot enter a network namespace: {os.strerror(errno)}")


@contextmanager
def inside_netns(name: str | None):
    """Run the body in network namespace `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    if not netns_exists(name):
        raise NetnsError(f"no network namespace named {name!r} (ip netns list shows those there are)")
    target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


@contextmanager
def private_netns():
    """A new, unnamed network namespace, entered for the body (unshare);
    yields a descriptor of it, which keeps it, and what is attached to its
    interfaces, after the body: the caller closes it, or the process's end
    does."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NetnsError(f"cannot make a network namespace: {os.strerror(errno)}")
        try:
            yield os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            _setns(home)
    finally:
        os.close(home)
