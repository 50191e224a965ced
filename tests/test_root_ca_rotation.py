"""The X.509 root CA rotated: a device asleep through it comes home pinned, with the new root."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing import ceremonies
from homing.pki.keys import spki_pin
from homing.trust.pins import PinPolicy
from tests.fleet import check_in, device, device_context, url
from tests.harness import RunningServer

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _held(state_root: Path) -> PinPolicy:
    return PinPolicy.from_bytes((state_root / "pins.json").read_bytes())


def test_a_device_asleep_through_a_root_ca_rotation_comes_home(
    server: RunningServer, tmp_path: Path
) -> None:
    from homing.agent.agent import Agent
    from homing.agent.decide import TrustChannel

    sleeper = device(server, tmp_path, "dev-sleeper", "board-a")
    check_in(server, sleeper)
    dd = server.state.dd
    old_root = dd.certificate("root-ca.pem")
    assert [c.subject for c in _held(sleeper.root).root_cas] == [old_root.subject]
    pins_before = _held(sleeper.root).spki_pins
    assert ceremonies.rotate_root_ca(dd, datetime.now(UTC)) == 2
    server.settle()
    roots = dd.certificates("root-ca.pem")
    assert roots[0].subject.rfc4514_string().startswith("CN=homing root CA 2")
    assert roots[1] == old_root
    # The server's chain holds its CA certified by both roots.
    chain = dd.certificates("server-chain.pem")
    issuers = {c.issuer for c in chain[1:]}
    assert issuers == {roots[0].subject, old_root.subject}
    # The sleeper holds only the old root; it comes home over its pinned channel.
    report = Agent(sleeper, server=url(server), firmware_version="1.0.0").run_once()
    assert report.checked_in, report
    assert report.trust_channel is TrustChannel.PINNED, report.steps
    held = _held(sleeper.root)
    assert {c.subject for c in held.root_cas} == {roots[0].subject, old_root.subject}
    assert held.spki_pins == pins_before  # same issuing keys: the pins did not move
    # Its certificate (from the old root's device CA) still authenticates it.
    answer = server.request(
        "POST", "/v1/device/checkin", {"trust": {}}, context=device_context(server, sleeper)
    )
    assert answer.status == 200, answer.body
    # A device made after the rotation chains to the new root and checks in too.
    fresh = device(server, tmp_path, "dev-fresh", "board-a")
    check_in(server, fresh)
    # A later server-CA promotion is still certified by the old root as well.
    ceremonies.rotate_issuing_ca(dd, "server", datetime.now(UTC), force_reason="test")
    server.settle()
    assert {c.issuer for c in dd.certificates("server-chain.pem")[1:]} == {
        roots[0].subject,
        old_root.subject,
    }
    report = Agent(sleeper, server=url(server), firmware_version="1.0.0").run_once()
    assert report.checked_in, report
    assert spki_pin(dd.certificate("server-ca.pem")) in _held(sleeper.root).spki_pins
