"""A signer cut off from the network lets go of the lease, says so, and another replica signs.

Two replicas in network namespaces reach PostgreSQL across a bridge. The
signer's link is cut (its veth on the bridge goes down: packets vanish, no
reset is sent, as when a cable or a cloud route fails). PostgreSQL would
notice the silent session only after two hours of default TCP keepalive;
homing bounds the lease session itself (``homing.server.signer``).
"""

from __future__ import annotations

import subprocess
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from homing import ceremonies
from homing.config import Expiries
from homing.server.signer import LEASE_TIMEOUT, current_signer
from homing.site import DataDir, shared
from tests.harness import postgres_database, run_homing, system_tool
from tests.netns import haproxy, network
from tests.test_replicas_netns import (
    PORT,
    _healthy,
    _join_replicas,
    _logs,
    _published_timestamp,
    wait_until,
)


def test_a_cut_signer_loses_the_lease_within_the_bound_and_another_replica_signs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with ExitStack() as stack:
        local_url = stack.enter_context(postgres_database())
        net = stack.enter_context(network(3))
        database = local_url.rsplit("/", 1)[1]
        planned = [(f"r{i}", net.address(i), PORT) for i in (1, 2, 3)]
        balancer = stack.enter_context(haproxy(net, planned, tmp_path))
        remote_url = f"postgresql://postgres@{net.gateway}:{balancer.pg_port}/{database}"
        site_dir = tmp_path / "site"
        ceremonies.init(
            site_dir,
            datetime.now(UTC),
            hosts=["homing.test", net.gateway],
            expiries=Expiries(timestamp=timedelta(seconds=16)),
        )
        site = DataDir(site_dir, local_url)
        stack.callback(site.close)
        assert shared.publish(site, datetime.now(UTC), "test") == 1
        keys = tmp_path / "online-keys"
        exported = run_homing(
            "keystore", "export-online", "--data", str(site_dir), "--to", str(keys)
        )
        assert exported.returncode == 0, exported.stderr
        replicas = _join_replicas(net, tmp_path, keys, local_url, remote_url)
        for replica in replicas:
            replica.start()
            stack.callback(replica.stop)
        root_ca = site_dir / "pki" / "root-ca.pem"
        db = site.database()
        try:
            wait_until("healthy replicas", lambda: all(_healthy(r, root_ca) for r in replicas))
            wait_until("a signer", lambda: current_signer(db) is not None)
            signer = current_signer(db)
            victim = next(r for r in replicas if r.name == signer)
            before = _published_timestamp(db)
            # The cut: the signer's side of the bridge goes down.
            subprocess.run(
                [system_tool("ip"), "link", "set", f"hv{net.tag}{victim.index}", "down"],
                check=True,
            )
            took = wait_until(
                "another replica to take the lease and re-sign",
                lambda: (
                    current_signer(db) not in (None, signer) and _published_timestamp(db) > before
                ),
            )
            # Within the lease bound, plus a pass of the others' maintenance
            # (one second here) and slack for a busy machine.
            assert took < LEASE_TIMEOUT + 30, took
            print(f"takeover after the cut: {took:.1f} s")
            # The cut signer noticed, said so, and stopped signing.
            wait_until(
                "the cut signer to log the loss",
                lambda: "lost the signer lease" in victim.log.read_text(),
                timeout=LEASE_TIMEOUT * 4,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_logs(replicas)}") from e
