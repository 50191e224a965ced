"""The web fleet view in a real browser: headless Chromium driven by Playwright.

The fleet is real (provisioned devices, agent check-ins over pinned mutual
TLS, a halted rollout); the browser logs in with operator tokens, reads every
page, pauses a rollout and revokes a device; a read-only token is refused.
Screenshots go to ``test-artifacts/`` (``HOMING_TEST_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from homing.agent.agent import Agent
from homing.agent.update import installer_for
from homing.operations import fleet as operations
from homing.store import audit, firmware
from homing.store import devices as device_store
from tests.fleet import QUIET_DAYS, Fleet, build_fleet, device_context, url
from tests.harness import RunningServer, system_tool

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

ARTIFACTS = Path(
    os.environ.get("HOMING_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")
)
# Chromium as root in a sandbox-less container, with no network beyond loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser(server: RunningServer) -> Iterator[Any]:
    """One Chromium per test, closed before its server stops (no socket outlives a test)."""
    chromium = system_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def fleet(server: RunningServer, tmp_path: Path) -> Fleet:
    return build_fleet(server, tmp_path)


def _token(server: RunningServer, name: str, role: str) -> str:
    return operations.add_token(server.state.db, "test", datetime.now(UTC), name, role)


def _page(browser: Any, server: RunningServer, token: str) -> Any:
    # The server's certificate chains to the site's private root, which this
    # throw-away browser profile does not hold; the test checks pages, not PKI.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{url(server)}/ui")
    assert page.url.endswith("/ui/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url(server)}/ui")
    return page


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def _bars(page: Any, figure: str) -> dict[str, int]:
    bars = page.locator(f"#{figure} g.bar")
    return {
        bars.nth(i).get_attribute("data-label"): int(bars.nth(i).get_attribute("data-count"))
        for i in range(bars.count())
    }


def _status(server: RunningServer, rollout_id: int) -> str:
    with server.state.db.engine.connect() as conn:
        return firmware.rollout(conn, rollout_id).status


def test_operator_reads_every_page_pauses_a_rollout_and_revokes(
    browser: Any, server: RunningServer, fleet: Fleet
) -> None:
    page = _page(browser, server, _token(server, "alice", "operator"))
    # The overview: numbers, the spread of trust, the timeline, the warnings.
    assert page.text_content("#active") == "4"
    assert page.text_content("#not-seen") == "1"
    assert _bars(page, "by-root") == {"root v1": 2, "root v2": 2}
    assert _bars(page, "by-pin-policy") == {"pins v1": 4}
    assert _bars(page, "by-generation") == {"server CA 1": 4}
    assert _bars(page, "by-firmware") == {"1.0.0": 4}
    assert sum(_bars(page, "cert-expiry").values()) == 4
    timeline = page.text_content("#timeline")
    for role in ("root", "targets", "snapshot", "timestamp", "firmware"):
        assert f"{role} metadata" in timeline
    assert "server certificate" in timeline
    assert "homing root CA" in timeline
    assert f"rollout {fleet.halted} halted" in page.text_content("#warnings")
    _shot(page, "fleet-overview")
    # Another window of "not seen".
    page.goto(f"{url(server)}/ui?days={QUIET_DAYS + 1}")
    assert page.text_content("#not-seen") == "0"

    # Devices and one device's page.
    page.click("nav >> text=Devices")
    rows = page.locator("#devices tbody tr")
    assert rows.count() == 4
    page.click("text=dev-a1")
    assert page.text_content("#device-id") == "dev-a1"
    assert page.text_content("#root-version") == "1"
    assert page.text_content("#pin-policy") == "v1"
    _shot(page, "device-page")

    # Rollouts: stages and the halt reason; pause the active one.
    page.click("nav >> text=Rollouts")
    halted = page.locator(f"#rollout-{fleet.halted}")
    assert "health check failed: no network" in halted.text_content()
    rolling = page.locator(f"#rollout-{fleet.rolling}")
    assert rolling.locator(".stages li").count() == 2
    assert rolling.locator(".stages li.current").text_content() == "50%"
    _shot(page, "rollouts")
    rolling.locator("button", has_text="Pause").click()
    page.wait_for_url(re.compile(r".*/ui/rollouts\?done=paused$"))
    assert _status(server, fleet.rolling) == "paused"
    assert "paused" in page.locator(f"#rollout-{fleet.rolling} .status").text_content()
    # The pause holds for devices: a board-a device in the stage gets nothing.
    for name in ("dev-a1", "dev-a2"):
        state = fleet.devices[name]
        agent = Agent(
            state,
            server=url(server),
            clock=lambda: datetime.now(UTC) + server.clock.offset,
            firmware_version="1.0.0",
        )
        report = agent.run_once()
        assert report.checked_in, report
        assert installer_for(agent).active_version() is None
        assert not any("firmware" in step for step in report.steps)

    # Revoke dev-a2 from its page; its next check-in is refused.
    page.goto(f"{url(server)}/ui/devices/dev-a2")
    page.fill("#revoke-form input[name=reason]", "stolen from the van")
    page.click("#revoke-form button")
    page.wait_for_url(re.compile(r".*/ui/devices/dev-a2\?revoked=1$"))
    assert page.text_content("#status").startswith("revoked")
    with server.state.db.engine.connect() as conn:
        row = device_store.device(conn, "dev-a2")
    assert row is not None
    assert row.status == "revoked"
    refused = server.request(
        "POST", "/v1/device/checkin", {}, context=device_context(server, fleet.devices["dev-a2"])
    )
    assert refused.status == 403

    # The audit log names the operator for every action taken in the browser.
    page.click("nav >> text=Audit log")
    actions = page.locator("#audit tbody tr")
    text = " ".join(actions.nth(i).text_content() for i in range(actions.count()))
    for action in ("ui_login", "rollout_pause", "revoke_device"):
        assert action in text
    assert "ui:alice" in text
    _shot(page, "audit-log")

    # Logging out ends the session for good: the old cookie opens nothing.
    cookies = page.context.cookies()
    page.locator("header button", has_text="Log out").click()
    page.wait_for_url(re.compile(r".*/ui/login$"))
    other = browser.new_context(ignore_https_errors=True)
    other.add_cookies(cookies)
    stale = other.new_page()
    stale.goto(f"{url(server)}/ui")
    assert stale.url.endswith("/ui/login")
    other.close()
    page.context.close()


def test_read_only_token_cannot_revoke_or_pause(
    browser: Any, server: RunningServer, fleet: Fleet
) -> None:
    page = _page(browser, server, _token(server, "rita", "read-only"))
    page.goto(f"{url(server)}/ui/devices/dev-a1")
    assert page.locator("#revoke-form").count() == 0
    page.goto(f"{url(server)}/ui/rollouts")
    assert page.locator("button", has_text="Pause").count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    # The attack: the read-only session forges the operator's form.
    answer = page.request.post(
        f"{url(server)}/ui/devices/dev-a1/revoke", form={"csrf": csrf, "reason": "x"}
    )
    assert answer.status == 403
    assert "it needs &#39;operator&#39;" in answer.text()
    answer = page.request.post(
        f"{url(server)}/ui/rollouts/{fleet.rolling}/pause", form={"csrf": csrf}
    )
    assert answer.status == 403
    with server.state.db.engine.connect() as conn:
        row = device_store.device(conn, "dev-a1")
        entries = audit.audit_entries(conn, 1000)
    assert row is not None
    assert row.status == "active"
    assert _status(server, fleet.rolling) == "active"
    assert not [
        e
        for e in entries
        if e["actor"] == "ui:rita"
        and e["action"] != "ui_login"
        and e["action"] not in ("list_devices", "show_device")
    ]
    _shot(page, "read-only-rollouts")  # no Pause or Resume for this role
    page.context.close()


def test_forged_and_foreign_forms_are_refused(
    browser: Any, server: RunningServer, fleet: Fleet
) -> None:
    page = _page(browser, server, _token(server, "olga", "operator"))
    page.goto(f"{url(server)}/ui/rollouts")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    target = f"{url(server)}/ui/rollouts/{fleet.rolling}/pause"
    # No CSRF value, a wrong one, and the right one sent from another origin.
    assert page.request.post(target, form={"reason": "x"}).status == 403
    assert page.request.post(target, form={"csrf": "A" * 43}).status == 403
    foreign = page.request.post(
        target, form={"csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status == 403
    assert _status(server, fleet.rolling) == "active"
    # Without a session at all: nothing happens either.
    anonymous = browser.new_context(ignore_https_errors=True)
    assert anonymous.request.post(target, form={"csrf": csrf}).status == 401
    login = anonymous.request.post(f"{url(server)}/ui/login", form={"token": "hom_wrong"})
    assert login.status == 401
    anonymous.close()
    assert _status(server, fleet.rolling) == "active"
    # And the real form works, so the refusals above were about the forgery.
    assert page.request.post(target, form={"csrf": csrf}).status == 200  # after the redirect
    assert _status(server, fleet.rolling) == "paused"
    # The halted rollout resumes from its own button.
    page.goto(f"{url(server)}/ui/rollouts")
    page.locator(f"#rollout-{fleet.halted} button", has_text="Resume").click()
    page.wait_for_url(re.compile(r".*/ui/rollouts\?done=resumed$"))
    assert _status(server, fleet.halted) == "active"
    page.context.close()


def test_pages_refuse_bad_input_in_one_clear_line(
    browser: Any, server: RunningServer, fleet: Fleet
) -> None:
    page = _page(browser, server, _token(server, "ivan", "read-only"))
    for path, status, words in (
        ("/ui?days=0", 400, "'days' must be"),
        ("/ui?days=abc", 400, "'days' must be"),
        ("/ui/devices/no-such-device", 404, "no device"),
        ("/ui/devices?search=" + "x" * 65, 400, "longer than 64"),
        ("/ui/findings?never_seen_days=0", 400, "'never_seen_days' must be"),
        ("/ui/findings?max_certificate_age_days=soon", 400, "'max_certificate_age_days' must"),
    ):
        answer = page.goto(f"{url(server)}{path}")
        assert answer.status == status, path
        assert words in page.text_content("[role=alert]")
    page.goto(f"{url(server)}/")
    assert page.url == f"{url(server)}/ui"
    headers = page.goto(f"{url(server)}/ui").headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    page.context.close()


def test_operator_reads_the_findings_and_revokes_a_batch_after_its_preview(
    browser: Any, server: RunningServer, fleet: Fleet, tmp_path: Path
) -> None:
    from tests.fleet import device

    # A seeded defect: enrolled ten days ago (server time) and never seen since.
    device(server, tmp_path, "dev-silent", "board-a")
    page = _page(browser, server, _token(server, "olga", "operator"))
    page.goto(f"{url(server)}/ui/findings?never_seen_days=1")
    assert page.locator("#never_seen li").all_text_contents() == ["dev-silent"]
    for clean in ("shared_key", "clone_suspected", "distrusted_ca", "old_certificate"):
        assert page.text_content(f"#{clean} .count") == "0", clean
    _shot(page, "findings")

    def statuses() -> dict[str, str]:
        with server.state.db.engine.connect() as conn:
            rows = [device_store.device(conn, d) for d in ("dev-a1", "dev-a2", "dev-b1")]
        return {r.device_id: r.status for r in rows if r is not None}

    page.goto(f"{url(server)}/ui/revocations")
    page.fill("#ids", "dev-a2\ndev-b1, ghost")
    page.fill("#reason", "key_compromise")
    page.click("#batch-form button[type=submit]")
    assert "This revokes 2 devices" in page.text_content("#preview")
    assert set(statuses().values()) == {"active"}  # a preview changes nothing
    _shot(page, "batch-preview")
    page.click("#confirm-form button[type=submit]")
    assert "Revoked 2 devices" in page.text_content("[role=status]")
    assert statuses() == {"dev-a1": "active", "dev-a2": "revoked", "dev-b1": "revoked"}
    with server.state.db.engine.connect() as conn:
        (entry,) = [e for e in audit.audit_entries(conn, 1000) if e["action"] == "revoke_batch"]
    assert entry["actor"] == "ui:olga"
    assert entry["detail"]["selection"] == {"device_ids": ["dev-a2", "dev-b1", "ghost"]}
    # A confirmation whose count no longer holds revokes nothing.
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    stale = page.request.post(
        f"{url(server)}/ui/revocations",
        form={"csrf": csrf, "ids": "dev-a1 dev-quiet", "confirm": "3"},
    )
    assert stale.status == 409
    assert "preview it again" in stale.text()
    bad = page.request.post(
        f"{url(server)}/ui/revocations",
        form={"csrf": csrf, "ids": "dev-a1", "station": "line-1"},
    )
    assert bad.status == 400
    assert "choose devices one way" in bad.text()
    assert statuses()["dev-a1"] == "active"
    # A read-only session is refused the same form.
    reader = _page(browser, server, _token(server, "rita", "read-only"))
    reader.goto(f"{url(server)}/ui/revocations")
    assert reader.locator("#batch-form").count() == 0
    token = reader.locator("input[name=csrf]").first.get_attribute("value")
    refused = reader.request.post(
        f"{url(server)}/ui/revocations", form={"csrf": token, "ids": "dev-a1", "confirm": "1"}
    )
    assert refused.status == 403
    assert statuses()["dev-a1"] == "active"
    reader.context.close()
    page.context.close()
