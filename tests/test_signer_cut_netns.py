"""A signer cut off from the network lets go of the lease, says so, and another replica signs.

Three replicas in network namespaces reach PostgreSQL across a bridge. The
signer's link is cut (its veth on the bridge goes down: packets vanish, no
reset is sent, as when a cable or a cloud route fails). PostgreSQL would
notice the silent session only after two hours of default TCP keepalive;
homing bounds the lease session itself (``homing.server.signer``).
"""

from __future__ import annotations

import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from homing.server.signer import LEASE_TIMEOUT, current_signer
from tests.harness import system_tool, wait_until
from tests.test_replicas_netns import _logs, _published_timestamp, three_replicas

# One bridge and its namespaces at a time: the netns tests share one test worker.
pytestmark = [pytest.mark.xdist_group("netns"), pytest.mark.long]


def test_a_cut_signer_loses_the_lease_within_the_bound_and_another_replica_signs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with ExitStack() as stack:
        lab = three_replicas(stack, tmp_path)
        net, replicas = lab.net, lab.replicas
        db = lab.site.database()
        try:
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
                "another replica to take the lease",
                lambda: current_signer(db) not in (None, signer),
            )
            # Within the lease bound, plus a pass of the others' maintenance
            # (one second here) and slack for a busy machine.
            assert took < LEASE_TIMEOUT + 30, took
            print(f"lease taken over after the cut: {took:.1f} s")
            # It signs as soon as it may change the site: at once, or, when the cut
            # came while the old signer held the site-change lock mid-publication,
            # once that lock's bounded session ends too (the same bound as the lease's,
            # though HAProxy in between would keep an unbounded session for 60 s).
            resigned = wait_until(
                "the new signer to re-sign the timestamp",
                lambda: _published_timestamp(db) > before,
            )
            print(f"timestamp re-signed after the cut: {resigned:.1f} s")
            assert resigned < LEASE_TIMEOUT + 30, resigned
            # The cut signer noticed, said so, and stopped signing.
            wait_until(
                "the cut signer to log the loss",
                lambda: "lost the signer lease" in victim.log.read_text(),
                timeout=LEASE_TIMEOUT * 4,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_logs(replicas)}") from e
