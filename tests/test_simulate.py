"""The fleet simulator: real checks, each strategy's real failures, and none for homing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from homing.agent.decide import CertificateAction
from homing.errors import ConfigError
from homing.fleet import STRATEGY_NAMES
from homing.fleet.home import SimulatedHome
from homing.fleet.scenario import Scenario
from homing.fleet.scenario_file import load_scenario, scenario_from_dict
from homing.fleet.simulate import CERT_EXPIRED, Results, StrategyResult, simulate
from homing.fleet.strategies import (
    CAUGHT_UP,
    CUT_OFF,
    OK,
    REFUSED,
    STRATEGIES,
    Cause,
    Homing,
    HomingPublicCA,
    PrivateCA,
)
from homing.fleet.strategy_base import Situation
from homing.fleet.world import HOST, build_world
from homing.trust.pins import PinPolicy
from tests.harness import run_homing

SCENARIOS = Path(__file__).resolve().parent.parent / "docs" / "scenarios"
# Enough devices for every population and pattern to appear, quick enough for CI.
DEVICES = 1500
# One test worker runs them all, first and in a row, so the default run below is
# simulated once (tests/conftest.py starts the long tests first).
pytestmark = [pytest.mark.xdist_group("simulate"), pytest.mark.long]


@pytest.fixture(scope="module")
def default_run() -> Results:
    return simulate(Scenario().with_fleet(devices=DEVICES))


def _by_name(results: Results) -> dict[str, dict[str, object]]:
    return {s.name: s.to_json() for s in results.strategies}


@pytest.mark.long
def test_homing_bricks_nothing_on_the_default_ten_years(default_run: Results) -> None:
    homing = _by_name(default_run)["homing"]
    assert homing["bricked"] == 0
    assert homing["manual_recoveries"] == 0
    assert homing["devices_ever_cut_off"] == 0
    # It did have work to do: stale devices caught up, expired certificates recovered.
    assert homing["catch_up"]["automatic"] > 0  # type: ignore[index]
    assert homing["key_proof_recoveries"] > 0  # type: ignore[operator]


def test_homing_with_a_public_ca_certificate_bricks_nothing_either(default_run: Results) -> None:
    """The public CA changes intermediates, roots and the server's key; pins are keys in TUF."""
    results = _by_name(default_run)
    public = results["homing-public-ca"]
    assert public["bricked"] == 0
    assert public["manual_recoveries"] == 0
    assert public["devices_ever_cut_off"] == 0
    assert public["catch_up"]["automatic"] > 0  # type: ignore[index]
    # Same public PKI, same fleet: the baseline that trusts it through firmware bricks.
    assert results["public-ca"]["bricked"] > 0  # type: ignore[operator]
    exposure = public["compromise"]["longest_exposure_days"]  # type: ignore[index]
    assert exposure <= default_run.timestamp_expiry_days


def test_the_public_ca_site_is_driven_by_the_acme_ceremonies(tmp_path: Path) -> None:
    """Every published pin policy of the public-CA site: public roots only, the server's keys."""
    from homing.config import Expiries
    from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy
    from homing.trust.repository import TrustRepository

    scenario = Scenario().with_fleet(devices=10)
    world = build_world(scenario, tmp_path)
    pins_seen = set()
    for state in world.homing_public_states:
        published = TrustRepository(state.directory, Expiries()).target_bytes(PIN_POLICY_TARGET)
        policy = PinPolicy.from_bytes(published)
        public_roots = {cert for cert, _ in world.public_roots}
        assert set(policy.root_cas) <= public_roots
        pins_seen |= set(policy.spki_pins)
    # Every key the server ever used was pinned before it was served.
    assert {world.key_pin(i) for i in range(len(world.keys) - 1)} <= pins_seen
    homing = HomingPublicCA(world, scenario)
    try:
        tick = world.ticks - 1
        newest = world.homing_public_states[-1]
        assert homing.contact(0, tick).outcome == CAUGHT_UP
        assert homing.contact(newest.index, tick).outcome == OK
    finally:
        homing.close()


def test_every_other_strategy_shows_its_failure_with_a_reason(default_run: Results) -> None:
    results = _by_name(default_run)
    for name in ("leaf-fingerprint", "announce-next", "public-ca", "hpkp", "private-ca"):
        assert results[name]["bricked"] > 0, name  # type: ignore[operator]
        assert results[name]["reasons"], name
    assert results["firmware-pins"]["manual_recoveries"] > 0  # type: ignore[operator]
    assert "update window" in str(results["firmware-pins"]["why"])
    assert "fingerprint" in str(results["leaf-fingerprint"]["why"])
    assert "root" in str(results["private-ca"]["why"])


def test_homing_exposure_to_a_stolen_key_is_bounded_by_the_timestamp_expiry(
    default_run: Results,
) -> None:
    results = _by_name(default_run)
    homing = results["homing"]["compromise"]
    assert default_run.timestamp_expiry_days == pytest.approx(1.0)
    assert homing["exposed_devices"] > 0  # type: ignore[index]
    assert homing["longest_exposure_days"] <= default_run.timestamp_expiry_days  # type: ignore[index]
    # The baselines that validate certificates stay exposed until the stolen one expires.
    assert results["private-ca"]["compromise"]["longest_exposure_days"] > 30  # type: ignore[index]


@pytest.mark.long
def test_same_seed_same_run_and_another_seed_another(default_run: Results) -> None:
    def stable(results: Results) -> dict[str, object]:
        doc = results.to_json()
        for s in doc["strategies"]:
            s["catch_up"].pop("mean_walk_ms")  # wall-clock time, measured
        return doc

    again = simulate(Scenario().with_fleet(devices=DEVICES))
    assert stable(again) == stable(default_run)
    other = simulate(Scenario().with_fleet(devices=DEVICES, seed=2), ["leaf-fingerprint"])
    assert other.strategies[0].connected != default_run.strategies[0].connected


@pytest.mark.parametrize(
    ("scenario", "strategy", "reason"),
    [
        ("pinned-intermediate.toml", "private-ca", "issuing CA was replaced"),
        ("root-expiry.toml", "private-ca", "private root expired"),
        ("update-channel.toml", "public-ca", "never received"),
        ("update-channel.toml", "firmware-pins", "update window"),
        ("short-device-certs.toml", "private-ca", CERT_EXPIRED),
    ],
)
def test_documented_scenarios_replay_their_failure(
    scenario: str, strategy: str, reason: str
) -> None:
    loaded = load_scenario(SCENARIOS / scenario).with_fleet(devices=800)
    results = _by_name(simulate(loaded, [strategy, "homing"]))
    assert any(reason in r for r in results[strategy]["reasons"]), results[strategy]["reasons"]  # type: ignore[attr-defined]
    assert results["homing"]["bricked"] == 0
    assert results["homing"]["manual_recoveries"] == 0


def test_short_device_certificates_are_recovered_by_key_proof() -> None:
    loaded = load_scenario(SCENARIOS / "short-device-certs.toml").with_fleet(devices=800)
    homing = simulate(loaded, ["homing"]).strategies[0]
    assert homing.bricked == 0
    assert homing.key_proof_recoveries > 100


def test_homing_devices_really_verify_the_metadata(tmp_path: Path) -> None:
    """Tamper with the newest published root: a stale device's real chain walk refuses it."""
    scenario = Scenario().with_fleet(devices=10)
    world = build_world(scenario, tmp_path)
    homing = Homing(world, scenario)
    try:
        newest = world.homing_states[-1]
        tick = world.ticks - 1
        assert homing.contact(0, tick).outcome == CAUGHT_UP
        assert homing.contact(newest.index, tick).outcome == OK
        metadata = newest.directory / "metadata"
        version = max(int(p.name.split(".")[0]) for p in metadata.glob("*.root.json"))
        path = metadata / f"{version}.root.json"
        root = Metadata.from_file(str(path))
        root.signed.expires = root.signed.expires.replace(year=root.signed.expires.year + 1)
        path.unlink()  # a new file, as the repository writes them (states share unchanged ones)
        path.write_bytes(root.to_bytes())  # signatures no longer match
        stale = next(s.index for s in world.homing_states if s.index > 0 and s.tick > 0)
        homing._walks.clear()
        verdict = homing.contact(stale, tick)
        assert verdict.outcome == CUT_OFF
        assert verdict.cause is Cause.TRUST_REFRESH_REFUSED
        assert verdict.detail
    finally:
        homing.close()


def test_private_ca_check_is_real_path_validation(tmp_path: Path) -> None:
    """A device holding another company's root cannot validate the server's chain."""
    scenario = Scenario().with_fleet(devices=10)
    world = build_world(scenario, tmp_path)
    strategy = PrivateCA(world, scenario)
    assert strategy.contact(strategy.factory(0), 0).outcome == OK
    other = build_world(scenario, tmp_path / "other")
    world.private_anchor_sets.append(other.private_anchor_sets[0])
    assert strategy.contact(len(world.private_anchor_sets) - 1, 0).outcome == CUT_OFF
    shutil.rmtree(tmp_path / "other")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"fleet": {"devices": 0}}, "fleet.devices"),
        ({"fleet": {"devcies": 5}}, "unknown key fleet.devcies"),
        ({"fleet": {"years": "ten"}}, "fleet.years must be a number"),
        ({"flet": {}}, "unknown table"),
        ({"population": [{"pattern": "always-on", "share": 0.5}]}, "add up to 1"),
        ({"population": [{"pattern": "sometimes", "share": 1.0}]}, "pattern must be one of"),
        ({"population": [{"share": 1.0}]}, "needs a pattern and a share"),
        ({"events": {"key_compromise": -1}}, "after the start"),
        ({"policy": {"private_ca_pins": "leaf"}}, "'root' or 'issuing'"),
        ({"server": {"announce_days": 120}}, "announce_days"),
    ],
)
def test_bad_scenarios_are_refused_with_the_field_named(
    doc: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        scenario_from_dict(doc)


def test_the_cli_offers_exactly_the_registered_strategies() -> None:
    assert tuple(STRATEGIES) == STRATEGY_NAMES


def test_every_documented_scenario_parses() -> None:
    files = sorted(SCENARIOS.glob("*.toml"))
    assert len(files) >= 4
    for path in files:
        assert load_scenario(path).name


def test_cli_writes_table_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    result = run_homing(
        "simulate", "--devices", "300", "--years", "3", "--seed", "5", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    for name in ("leaf-fingerprint", "homing", "firmware-pins"):
        assert name in result.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["devices"] == 300
    assert doc["seed"] == 5
    assert {s["name"] for s in doc["strategies"]} >= {"homing", "hpkp"}
    for png in ("connected.png", "bricked.png", "cut-off-days.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Device-days cut off, per device class: the baseline that fails has some, homing none.
    by_name = {s["name"]: s for s in doc["strategies"]}
    assert by_name["homing"]["cut_off_device_days"]["total"] == 0
    leaf = by_name["leaf-fingerprint"]["cut_off_device_days"]
    assert leaf["total"] > 0
    assert set(leaf) > {"total", "always-on", "daily"}
    assert "cut-off" in result.stdout
    # Fits 80 columns (a terminal, a terminal over ssh, a CI log), names never broken.
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(" ")]
    assert {"leaf-fingerprint", "homing-public-ca", "firmware-pins"} <= {r[0] for r in rows if r}
    # Firmware went through homing's agent; the baselines report none of their own.
    firmware = by_name["homing"]["firmware"]
    assert firmware["installs"] > 0
    assert firmware["devices_behind_what_they_were_offered"] == 0
    assert by_name["leaf-fingerprint"]["firmware"] is None
    assert "homing: " + f"{firmware['installs']:,} firmware updates" in result.stdout


def test_cli_refuses_a_bad_scenario_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[fleet]\ndevices = -3\n")
    result = run_homing("simulate", "--scenario", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 1
    assert "fleet.devices" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_shorter_run_shortens_assembly_and_drops_later_events() -> None:
    short = Scenario().with_fleet(years=1.0, devices=200)
    assert short.fleet.manufacture_years == 1.0
    results = simulate(short, ["homing", "private-ca"])
    assert results.compromise_day is None  # the default theft is in year 5.5
    assert all(tick < results.ticks for tick, _ in results.events)
    with pytest.raises(ConfigError, match="manufacture_years"):
        scenario_from_dict({"fleet": {"years": 2, "manufacture_years": 3}})


def _every_event_kind(years: float) -> dict[str, object]:
    """Every kind of dated event the scenario format has, spread over a run of ``years``."""
    at = [round(years * share, 3) for share in (0.15, 0.3, 0.45, 0.6, 0.75)]
    return {
        "events": {"root_ca_rotations": [at[1]]},
        "outage": [{"at": at[0], "days": 30, "share": 0.2}],
        "revocation": [{"at": at[1], "share": 0.05}],
        # One lapse at a time, four weeks apart at least: all four roles where they fit.
        "lapse": [
            {"role": role, "at": when, "days": 14}
            for role, when in zip(
                ("timestamp", "snapshot", "targets", "root") if years >= 1 else ("root",),
                at,
                strict=False,
            )
        ],
        "ca_compromise": [{"ca": "server", "at": at[2]}, {"ca": "device", "at": at[3]}],
        "firmware_key_rotation": [{"at": at[4], "retire_after_days": 30}],
        "emergency_rotation": [
            {"of": of, "at": when}
            for of, when in zip(("server-key", "server-ca", "device-ca", "root"), at, strict=False)
        ],
        "compromise": {"response_days": 10, "intercepted_share": 0.5, "intercept_days": 90},
    }


@pytest.mark.long
@pytest.mark.parametrize("years", [0.1, 1, 7, 20, 50])
def test_the_simulator_runs_every_event_kind_to_every_year_it_accepts(years: float) -> None:
    """It crashed at 13 years (the TUF root expired), 19 (an issuing CA expired), and on
    any root lapse; the CLI accepts any length up to 50 years.

    The quiet fleet runs up to 20 years; at 50 only the busy one, which holds
    every ceremony the quiet one does and more (a quiet 50-year run cost
    another 65 s of the suite for nothing the busy run does not check).
    """
    if years <= 20:
        quiet = Scenario().with_fleet(devices=100, years=years)
        results = simulate(quiet, ["homing", "private-ca"])
        homing, private = results.strategies
        assert homing.bricked == 0
        assert homing.why == "never cut off"
        assert homing.cut_off_devices == 0
        if years >= 7:
            assert homing.caught_up > 0
        if years >= 20:
            # The baseline still fails for its own reason across the longer run (its
            # root lives eight years).
            assert private.bricked > 0
    busy = scenario_from_dict({
        "fleet": {"devices": 100, "years": years, "manufacture_years": min(3, years)},
        **_every_event_kind(years),
    })  # fmt: skip
    results = simulate(busy, ["homing", "private-ca"])
    homing, private = results.strategies
    assert homing.bricked == 0, homing.why
    assert homing.revoked == private.revoked
    assert sum(homing.end_states.values()) == 100
    assert results.ticks == len(homing.connected)


def test_the_cli_accepts_no_more_years_than_the_simulator_runs() -> None:
    result = run_homing("simulate", "--years", "51", "--devices", "10")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# -- the events of real incidents, one scenario each ---------------------------

EVENT_DEVICES = 600


def _event_run(name: str, strategies: list[str]) -> dict[str, StrategyResult]:
    scenario = load_scenario(SCENARIOS / name).with_fleet(devices=EVENT_DEVICES)
    return {s.name: s for s in simulate(scenario, strategies).strategies}


@pytest.mark.parametrize(
    ("scenario", "baseline", "cause"),
    [
        # Offline through the announcements: the next fingerprint never arrived.
        ("outage.toml", "announce-next", Cause.MISSED_ANNOUNCEMENT),
        # Twenty-year certificates and no key proof: nothing replaces a distrusted one.
        ("device-ca-compromise.toml", "private-ca", Cause.DEVICE_CA_DISTRUSTED),
        # Firmware that knows only the retired key never installs the new roots.
        ("firmware-key-rotation.toml", "public-ca", Cause.FIRMWARE_KEY_RETIRED),
        ("firmware-key-rotation.toml", "firmware-pins", Cause.FIRMWARE_KEY_RETIRED),
    ],
)
def test_an_incident_cuts_a_baseline_off_for_its_reason_and_homing_bricks_none(
    scenario: str, baseline: str, cause: Cause
) -> None:
    results = _event_run(scenario, [baseline, "homing"])
    failing, homing = results[baseline], results["homing"]
    assert failing.reasons[cause] > 0, failing.reasons
    assert sum(failing.cut_off_days.values()) > 0
    assert homing.bricked == 0
    assert homing.manual_recoveries == 0
    assert sum(homing.cut_off_days.values()) == 0


def test_a_stolen_device_ca_is_survived_by_key_proof() -> None:
    homing = _event_run("device-ca-compromise.toml", ["homing"])["homing"]
    # Every deployed device proved its key for a certificate from the new device CA.
    assert homing.key_proof_recoveries >= EVENT_DEVICES * 0.9
    assert homing.bricked == 0


def test_wrong_clocks_homing_takes_its_time_from_home_and_loses_no_device() -> None:
    results = _event_run("clock-skew.toml", ["private-ca", "homing"])
    private, homing = results["private-ca"], results["homing"]
    assert private.reasons[Cause.CLOCK_WRONG] > 0
    assert private.cut_off_days["dead RTC (1970)"] > 0
    assert private.cut_off_days["ten years ahead"] > 0
    assert private.cut_off_days["good clock"] == 0
    # A clock in doubt (behind its floor, past every expiry it holds) asks home for the
    # time: a 1970 clock and a clock ten years ahead both come home.
    for population in ("dead RTC (1970)", "ten years ahead", "good clock"):
        assert homing.cut_off_days[population] == 0, population
    assert Cause.CLOCK_WRONG not in homing.reasons
    assert homing.bricked == 0


def test_a_metadata_lapse_cuts_homing_off_until_it_is_re_signed_and_bricks_none() -> None:
    """homing fails closed by design while the operator lets metadata expire; honest numbers."""
    scenario = load_scenario(SCENARIOS / "metadata-lapse.toml").with_fleet(devices=EVENT_DEVICES)
    results = simulate(scenario, ["private-ca", "homing"])
    by_name = {s.name: s for s in results.strategies}
    homing = by_name["homing"]
    assert homing.reasons[Cause.METADATA_EXPIRED] > 0
    assert sum(homing.cut_off_days.values()) > 0
    assert homing.bricked == 0  # back by themselves once re-signed
    assert homing.connected[-1] == 1.0
    lapse_weeks = [t for t, e in results.events if "lapse" in e]
    assert min(homing.connected[t] for t in lapse_weeks) < 0.5
    # The baselines carry no metadata: the lapse touches none of them.
    assert sum(by_name["private-ca"].cut_off_days.values()) == 0


def test_revoked_devices_are_refused_by_every_strategy_and_never_come_back() -> None:
    results = _event_run("revocation.toml", ["private-ca", "homing"])
    private, homing = results["private-ca"], results["homing"]
    assert homing.revoked > 0
    assert homing.revoked == private.revoked
    # About 5 % were revoked (3 % and 2 %); refused to the end, never recovered by key
    # proof, and never counted bricked.
    assert 0.02 * EVENT_DEVICES < homing.revoked < 0.08 * EVENT_DEVICES
    assert homing.bricked == 0


def test_dated_events_are_parsed_strictly() -> None:
    for doc, message in [
        ({"outage": [{"at": 1.0, "days": 30}]}, "needs share"),
        ({"outage": [{"at": 1.0, "days": 30, "share": 1.5}]}, "share must be"),
        ({"lapse": [{"role": "mirrors", "at": 1.0, "days": 14}]}, "role must be one of"),
        ({"lapse": [{"role": "root", "at": 1.0, "days": 2}]}, "days must be between"),
        ({"ca_compromise": [{"ca": "root", "at": 1.0}]}, "ca must be one of"),
        ({"revocation": {"at": 1.0, "share": 0.1}}, "array of tables"),
        ({"firmware_key_rotation": [{"at": "soon"}]}, "must be a number"),
        ({"population": [{"pattern": "always-on", "share": 1.0, "clock_offset_days": 1e6}]}, "100"),
    ]:
        with pytest.raises(ConfigError, match=message):
            scenario_from_dict(doc)


def test_a_stolen_server_ca_fools_pinned_private_roots_for_years_and_homing_for_a_day() -> None:
    """The attacker mints a certificate for home under the stolen issuing CA's key."""
    scenario = load_scenario(SCENARIOS / "server-ca-compromise.toml").with_fleet(
        devices=EVENT_DEVICES
    )
    results = {
        s.name: s for s in simulate(scenario, ["private-ca", "public-ca", "homing"]).strategies
    }
    private = results["private-ca"].exposures["server CA key"]
    homing = results["homing"].exposures["server CA key"]
    public = results["public-ca"].exposures["server CA key"]
    # The pinned private root still vouches for the stolen CA until it expires.
    assert private["exposed_devices"] > EVENT_DEVICES / 2
    assert private["longest_exposure_days"] is None or private["longest_exposure_days"] > 365
    # homing drops the stolen CA's pin at once; a device that has not heard of it is
    # fooled at most until the attacker's freshest replayed timestamp expires.
    assert homing["longest_exposure_days"] is not None
    assert homing["longest_exposure_days"] <= 1.0
    # A public-CA fleet never trusted the company's CA.
    assert public["exposed_devices"] == 0
    assert results["homing"].bricked == 0


KEEP, RENEW, RECOVER = CertificateAction.KEEP, CertificateAction.RENEW, CertificateAction.RECOVER


@pytest.mark.parametrize(
    ("situation", "outcome", "renewed", "recovered", "refusals", "posts"),
    [
        # By its dates: EST re-enrollment, then the check-in.
        (Situation(RENEW), OK, True, False, (), 2),
        # Expired while away: challenge, proof, check-in, never a refused check-in first.
        (Situation(RECOVER), OK, False, True, (), 3),
        # A distrusted CA: the check-in is refused, the agent recovers and checks in again.
        (Situation(KEEP, distrusted=True), OK, False, True, ("certificate_distrusted",), 4),
        (
            Situation(RENEW, distrusted=True),
            OK,
            False,
            True,
            ("certificate_distrusted", "certificate_distrusted"),
            5,
        ),
        # Revoked: refused wherever it knocks, recovery included; the agent stops.
        # (Any id gets a challenge; a revoked device is told once its proof holds.)
        (Situation(KEEP, revoked=True), REFUSED, False, False, ("revoked",), 1),
        (Situation(RECOVER, revoked=True), REFUSED, False, False, ("revoked",), 2),
        # A distrusted CA does not open recovery to a revoked device.
        (
            Situation(KEEP, distrusted=True, revoked=True),
            REFUSED,
            False,
            False,
            ("certificate_distrusted", "revoked"),
            3,
        ),
    ],
)
def test_homing_devices_meet_the_home_server_through_the_agent_and_its_rules(
    tmp_path: Path,
    situation: Situation,
    outcome: int,
    renewed: bool,
    recovered: bool,
    refusals: tuple[str, ...],
    posts: int,
) -> None:
    """The real agent's cycle over its client seam, answered by the server's own rules."""
    home = SimulatedHome(90)
    policy = PinPolicy(tuple(home.trust.roots), (), (HOST,), f"https://{HOST}")
    step = home.converse(situation, tmp_path, policy)
    assert (step.outcome, step.renewed, step.recovered) == (outcome, renewed, recovered)
    assert step.refusals == refusals
    assert step.posts == posts


@pytest.mark.parametrize(
    ("situation", "outcome", "cause", "refusals"),
    [
        (Situation(KEEP), OK, None, ()),
        (Situation(RECOVER), CUT_OFF, Cause.CERT_EXPIRED, ("certificate_expired",)),
        (
            Situation(KEEP, distrusted=True),
            CUT_OFF,
            Cause.DEVICE_CA_DISTRUSTED,
            ("certificate_distrusted",),
        ),
        (Situation(RENEW, revoked=True), REFUSED, None, ("revoked",)),
    ],
)
def test_other_strategies_present_their_certificate_to_the_same_rules(
    situation: Situation, outcome: int, cause: Cause | None, refusals: tuple[str, ...]
) -> None:
    step = SimulatedHome(90).presented(situation)
    assert (step.outcome, step.refusals) == (outcome, refusals)
    if cause is not None:
        assert step.cause is cause


def _rotation_world(tmp_path: Path) -> tuple[Homing, SimulatedHome, int]:
    scenario = load_scenario(SCENARIOS / "firmware-key-rotation.toml").with_fleet(devices=10)
    world = build_world(scenario, tmp_path / "world", public_site=False)
    homing = Homing(world, scenario)
    return homing, SimulatedHome(homing.device_cert_days), len(world.homing_states) - 1


def _firmware_keyids(directory: Path) -> set[str]:
    """The keys the newest top-level targets delegates the firmware role to."""
    versions = [p for p in (directory / "metadata").glob("*.targets.json")]
    newest = max(versions, key=lambda p: int(p.name.split(".")[0]))
    targets = json.loads(newest.read_text())
    return {k for role in targets["signed"]["delegations"]["roles"] for k in role["keyids"]}


def test_a_device_that_slept_through_a_firmware_key_rotation_installs_the_newest_firmware(
    tmp_path: Path,
) -> None:
    """The real agent's update: the image verified through the re-delegated firmware role."""
    homing, home, last = _rotation_world(tmp_path)
    first = homing.world.homing_states[1]
    newest = homing.world.homing_states[last]
    assert first.firmware is not None
    assert newest.firmware is not None
    # The firmware role is signed by another key now; the old one is retired.
    assert _firmware_keyids(first.directory).isdisjoint(_firmware_keyids(newest.directory))
    step = homing.firmware_step(home, last, first.firmware.sequence)
    assert step.committed == newest.firmware.version
    assert step.update_refused is None
    # Check-in, the image's metadata, the download, four progress reports, the health check-in.
    assert step.posts >= 7


@pytest.mark.parametrize("damage", ["altered", "truncated"])
def test_a_damaged_image_is_refused_by_the_agent_and_nothing_is_installed(
    tmp_path: Path, damage: str
) -> None:
    homing, home, last = _rotation_world(tmp_path)
    newest = homing.world.homing_states[last]
    assert newest.firmware is not None
    digest_named = [
        p for p in (newest.directory / "targets" / "firmware").iterdir() if p.suffix == ".img"
    ]
    for image in digest_named:
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[::-1])
    step = homing.firmware_step(home, last, 1)
    assert step.committed is None
    assert step.update_refused is not None
    expected = "incomplete" if damage == "truncated" else "signed hashes"
    assert expected in step.update_refused


def test_homing_devices_take_every_release_after_a_firmware_key_rotation() -> None:
    homing = _event_run("firmware-key-rotation.toml", ["homing"])["homing"]
    assert homing.firmware_installs > EVENT_DEVICES
    assert homing.firmware_refused == 0
    # Every device runs what it was last offered, warehouse devices included.
    assert homing.firmware_behind == 0


def test_large_figures_stay_narrow() -> None:
    """The default run's figures reach hundreds of millions: seven characters at most."""
    from homing.fleet.report import compact

    assert compact(99_999) == "99,999"
    assert compact(191_374) == "191 k"
    assert compact(1_668_512) == "1.7 M"
    assert compact(106_704_036) == "107 M"
    assert compact(158_000_000_000) == "158 G"
    assert max(len(compact(10**k * 7.77)) for k in range(13)) <= 7
