"""Nodes in network namespaces of their own, whose link to Redis a test can cut and heal.

Each node gets a namespace and a veth pair. Its end holds a private address (10.213.N.2) that
exists only in that namespace; the host's end holds no address at all, only a /32 route to
it, so nothing is added to the host's own network. Inside, 127.0.0.0/8 is routed over the
veth (``route_localnet`` on the two test-made interfaces), so the node reaches the test's
Redis at the same ``redis://127.0.0.1:port`` as every other process, and the link is the only
way there. Cutting the link drops every packet silently, as a dead switch does: no reset, no
refusal, only silence until TCP gives up or the link comes back.

A node also gets a hostname of its own (a UTS namespace), as a separate machine would.
Needs root and ``ip``; ``unavailable()`` says why not, and the tests skip with that reason.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
from collections.abc import Callable

CLONE_NEWNET, CLONE_NEWUTS = 0x40000000, 0x04000000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def unavailable() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "network namespaces need root and iproute2 (`ip`)"
    name = f"dqprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
        _ip("netns", "del", name)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"this machine refuses network namespaces: {getattr(e, 'stderr', e)}"
    return None


class Node:
    def __init__(self, tag: str, index: int) -> None:
        self.ns = f"dq{tag}n{index}"
        self.host_if, self.node_if = f"dq{tag}h{index}", f"dq{tag}v{index}"
        self.addr = f"10.213.{index}.2"

    def create(self) -> None:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
        _ip("link", "set", self.node_if, "netns", self.ns)
        _sysctl(f"net.ipv4.conf.{self.host_if}.route_localnet", "1")
        inside = ["ip", "netns", "exec", self.ns]
        for conf in ("all", self.node_if):
            subprocess.run(
                [*inside, "sysctl", "-qw", f"net.ipv4.conf.{conf}.route_localnet=1"], check=True
            )
        _ip("-n", self.ns, "addr", "add", f"{self.addr}/32", "dev", self.node_if)
        _ip("-n", self.ns, "link", "set", self.node_if, "up")
        _ip("-n", self.ns, "route", "add", "127.0.0.0/8", "dev", self.node_if, "src", self.addr)
        self.heal()

    def cut(self) -> None:
        """Drop everything between the node and the host, silently."""
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")
        # A link going down takes its routes with it.
        _ip("route", "replace", f"{self.addr}/32", "dev", self.host_if)

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def enter(self, hostname: str) -> Callable[[], None]:
        """A ``preexec_fn``: the child joins this node's network and gets its own hostname."""
        path = f"/var/run/netns/{self.ns}"

        def join() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            if libc.setns(fd, CLONE_NEWNET) != 0 or libc.unshare(CLONE_NEWUTS) != 0:
                raise OSError(ctypes.get_errno(), f"cannot enter {path}")
            os.close(fd)
            socket.sethostname(hostname)

        return join


def _sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/{name.replace('.', '/')}", "w") as f:
        f.write(value)
