"""Two hosts: one peer in each of two network namespaces joined by a veth pair, as two machines on a LAN.

The test creates the namespaces itself (needs root and iproute2) and removes them afterwards; where that is not
possible it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from tests.integration.swarmkit import PeerProcess

pytestmark = [pytest.mark.slow, pytest.mark.netns]

SUBNET = "10.213.77"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    if shutil.which("ip") is None:
        pytest.skip("two-host test skipped: iproute2 (`ip`) is not installed")
    if os.geteuid() != 0:
        pytest.skip("two-host test skipped: creating network namespaces needs root")
    tag = uuid.uuid4().hex[:6]
    a, b = f"koinon-a-{tag}", f"koinon-b-{tag}"
    try:
        _ip("netns", "add", a)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"two-host test skipped: cannot create a network namespace ({e.stderr.strip()})")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"va-{tag}", "type", "veth", "peer", "name", f"vb-{tag}")
        _ip("link", "set", f"va-{tag}", "netns", a)
        _ip("link", "set", f"vb-{tag}", "netns", b)
        for ns, dev, addr in ((a, f"va-{tag}", f"{SUBNET}.1"), (b, f"vb-{tag}", f"{SUBNET}.2")):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield (a, f"{SUBNET}.1"), (b, f"{SUBNET}.2")
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_two_hosts_train_two_rounds_together(two_hosts, tmp_path):
    (ns_a, addr_a), (ns_b, addr_b) = two_hosts
    args = [
        "--rounds",
        "2",
        "--wait-for-peers",
        "2",
        "--inner-steps",
        "10",
        "--threads",
        "1",
        "--matchmaking-time",
        "1",
    ]
    host_a = PeerProcess(  # a swarm of two: two contributors make a round
        tmp_path / "host-a",
        extra=[*args, "--min-contributors", "2"],
        wrapper=["ip", "netns", "exec", ns_a],
        listen=f"/ip4/{addr_a}/tcp/0",
    )
    host_b = None
    try:
        boot = host_a.maddrs()
        assert all(addr_a in m for m in boot), boot
        host_b = PeerProcess(
            tmp_path / "host-b", boot, extra=args, wrapper=["ip", "netns", "exec", ns_b], listen=f"/ip4/{addr_b}/tcp/0"
        )
        assert host_a.proc.wait(240) == 0, host_a.log_tail()
        assert host_b.proc.wait(240) == 0, host_b.log_tail()
        ra, rb = host_a.rounds(), host_b.rounds()
        for r in (1, 2):
            assert ra[r]["theta"] == rb[r]["theta"], f"round {r}: θ differs between the two hosts"
            assert ra[r]["peers"] == 2 and rb[r]["peers"] == 2, f"round {r} was not averaged across the hosts"
            assert ra[r]["bytes_sent"] > 0
    finally:
        for p in (host_a, host_b):
            if p is not None and p.proc.poll() is None:
                p.stop()
