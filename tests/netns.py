"""Separate hosts on this machine: network namespaces on one bridge, and HAProxy in front.

Each host is a namespace with its own address on a bridge in the root
namespace (``10.X.0.1``, which also carries the load balancer and a TCP
path to the machine's PostgreSQL, which listens on loopback only). Names
carry a random tag so concurrent runs never collide, and everything is torn
down even when a test fails.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import free_port, system_tool


def _ip(*args: str) -> None:
    subprocess.run([system_tool("ip"), *args], check=True, capture_output=True, text=True)


@dataclass
class Network:
    tag: str
    subnet: int  # the X of 10.X.0.0/24
    hosts: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"hb{self.tag}"

    @property
    def gateway(self) -> str:
        return f"10.{self.subnet}.0.1"

    def address(self, index: int) -> str:
        return f"10.{self.subnet}.0.{10 + index}"

    def namespace(self, index: int) -> str:
        return f"homing-{self.tag}-{index}"

    def run_in(self, index: int, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``index``'s namespace."""
        return [system_tool("ip"), "netns", "exec", self.namespace(index), *argv]


@contextmanager
def network(host_count: int) -> Iterator[Network]:
    """A bridge and ``host_count`` namespaces, each with one address on it."""
    tag = f"{random.getrandbits(24):06x}"
    routes = subprocess.run(
        [system_tool("ip"), "-4", "route"], capture_output=True, text=True, check=True
    ).stdout
    free = [x for x in range(100, 250) if f"10.{x}." not in routes]
    net = Network(tag, random.choice(free))
    try:
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        for i in range(1, host_count + 1):
            ns, outer, inner = net.namespace(i), f"hv{tag}{i}", f"hi{tag}{i}"
            _ip("netns", "add", ns)
            net.hosts.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", outer, "master", net.bridge)
            _ip("link", "set", outer, "up")
            _ip("link", "set", inner, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{net.address(i)}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", net.gateway)
        yield net
    finally:
        for ns in net.hosts:
            subprocess.run([system_tool("ip"), "netns", "delete", ns], capture_output=True)
        subprocess.run([system_tool("ip"), "link", "delete", net.bridge], capture_output=True)


HAPROXY_CONFIG = """\
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 2
    option redispatch
frontend devices
    bind {gateway}:{lb_port}
    default_backend homing
backend homing
    balance roundrobin
    default-server check inter 300ms fall 1 rise 2 on-marked-down shutdown-sessions
{servers}
frontend postgres
    bind {gateway}:{pg_port}
    default_backend postgres
backend postgres
    server local 127.0.0.1:5432
"""


@dataclass
class Balancer:
    process: subprocess.Popen[bytes]
    lb_port: int
    pg_port: int


@contextmanager
def haproxy(
    net: Network, backends: list[tuple[str, str, int]], workdir: Path
) -> Iterator[Balancer]:
    """HAProxy on the bridge: devices to the replicas, and replicas to PostgreSQL."""
    lb_port, pg_port = free_port(net.gateway), free_port(net.gateway)
    servers = "\n".join(f"    server {name} {host}:{port}" for name, host, port in backends)
    config = workdir / "haproxy.cfg"
    config.write_text(
        HAPROXY_CONFIG.format(
            gateway=net.gateway, lb_port=lb_port, pg_port=pg_port, servers=servers
        )
    )
    subprocess.run([system_tool("haproxy"), "-c", "-q", "-f", str(config)], check=True)
    process = subprocess.Popen(
        [system_tool("haproxy"), "-db", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((net.gateway, pg_port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stderr.read().decode() if process.stderr else ""
                    raise AssertionError(f"haproxy did not start: {output}") from None
                time.sleep(0.1)
        yield Balancer(process, lb_port, pg_port)
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
