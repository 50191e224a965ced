"""Chain validation, SPKI pins, name constraints and CRLs, on real certificates."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing import ceremonies
from homing.config import Limits
from homing.errors import ChainError, PinError, PKIError, RevokedError
from homing.pki import (
    Authority,
    MemoryLedger,
    check_not_revoked,
    generate_tls_key,
    make_issuing_ca,
    make_root_ca,
    spki_pin,
    verify_client_chain,
    verify_crl,
    verify_pins,
    verify_server_chain,
)
from homing.pki.profiles import ApprovedRequest, device_profile, server_profile
from homing.pki.validate import issuers_of, load_certificate
from homing.site import DataDir
from homing.trust.pins import PinPolicy
from tests.conftest import device_csr, make_csr


def _server_chain(data: Path) -> list[x509.Certificate]:
    return DataDir(data).certificates("server-chain.pem")


def _policy(data: Path) -> PinPolicy:
    dd = DataDir(data)
    settings = dd.settings()
    return ceremonies.pin_policy(dd, settings, dd.keystore(settings))


def test_server_chain_validates_and_is_pinned(data_dir: Path, now: datetime) -> None:
    leaf, ca = _server_chain(data_dir)
    policy = _policy(data_dir)
    for host in ("localhost", "127.0.0.1"):
        chain = verify_server_chain(leaf, [ca], policy.root_cas, host, now)
        assert verify_pins(chain, policy.spki_pins) == spki_pin(ca)


def test_wrong_host_is_refused(data_dir: Path, now: datetime) -> None:
    leaf, ca = _server_chain(data_dir)
    with pytest.raises(ChainError, match="does not validate"):
        verify_server_chain(leaf, [ca], _policy(data_dir).root_cas, "example.org", now)


def test_mitm_with_another_ca_is_refused(data_dir: Path, tmp_path: Path, now: datetime) -> None:
    """Attack: a man in the middle presents a valid chain from a different private CA."""
    other = tmp_path / "attacker"
    ceremonies.init(other, now)
    leaf, ca = _server_chain(other)
    with pytest.raises(ChainError):
        verify_server_chain(leaf, [ca], _policy(data_dir).root_cas, "localhost", now)
    # Negative control: the attacker's chain is itself well formed.
    verify_server_chain(leaf, [ca], _policy(other).root_cas, "localhost", now)


def test_right_root_but_unpinned_issuing_key_is_refused(data_dir: Path, now: datetime) -> None:
    """Attack: a certificate chaining to the pinned root through an unpinned CA key."""
    dd = DataDir(data_dir)
    settings = dd.settings()
    store = dd.keystore(settings)
    root = dd.certificate("root-ca.pem")
    rogue_key = generate_tls_key()
    rogue_ca = make_issuing_ca(
        "server",
        rogue_key.public_key(),
        root,
        store.load("root-ca"),
        now,  # type: ignore[arg-type]
        hosts=settings.hosts,
    )
    leaf = Authority(rogue_ca, rogue_key, MemoryLedger()).issue_csr(
        make_csr(dns=["localhost"]), server_profile(settings.hosts), now
    )
    chain = verify_server_chain(leaf, [rogue_ca], [root], "localhost", now)
    with pytest.raises(PinError, match="no certificate in the validated chain"):
        verify_pins(chain, _policy(data_dir).spki_pins)


def test_expired_leaf_is_refused(data_dir: Path, now: datetime) -> None:
    leaf, ca = _server_chain(data_dir)
    with pytest.raises(ChainError):
        verify_server_chain(
            leaf, [ca], _policy(data_dir).root_cas, "localhost", now + timedelta(days=31)
        )


def test_empty_pin_set_never_trusts(data_dir: Path, now: datetime) -> None:
    leaf, ca = _server_chain(data_dir)
    chain = verify_server_chain(leaf, [ca], _policy(data_dir).root_cas, "localhost", now)
    with pytest.raises(PinError, match="no pins configured"):
        verify_pins(chain, [])


def test_chain_bounds_are_enforced_before_parsing(data_dir: Path, now: datetime) -> None:
    leaf, ca = _server_chain(data_dir)
    with pytest.raises(ChainError, match="limit"):
        load_certificate(b"0" * (Limits().max_certificate_bytes + 1))
    with pytest.raises(ChainError, match="intermediates"):
        verify_server_chain(leaf, [ca] * 5, _policy(data_dir).root_cas, "localhost", now)
    with pytest.raises(ChainError):
        verify_server_chain(
            leaf, [ca], _policy(data_dir).root_cas, "localhost", now, Limits(max_chain_depth=0)
        )


def _hierarchy(now: datetime) -> tuple[x509.Certificate, Authority, Authority]:
    root_key = generate_tls_key()
    root = make_root_ca(root_key, now)
    ledger = MemoryLedger()
    s_key, d_key = generate_tls_key(), generate_tls_key()
    server = Authority(
        make_issuing_ca("server", s_key.public_key(), root, root_key, now, hosts=["localhost"]),
        s_key,
        ledger,
    )
    device = Authority(
        make_issuing_ca("device", d_key.public_key(), root, root_key, now), d_key, ledger
    )
    return root, server, device


def test_device_chain_validates_as_client(now: datetime) -> None:
    root, _, device = _hierarchy(now)
    cert = device.issue_csr(device_csr("dev-1"), device_profile(), now)
    chain = verify_client_chain(cert, [device.certificate], [root], now)
    assert [n.value for n in chain.subjects] == ["urn:homing:device:dev-1"]


def test_the_site_trusts_thirty_device_ca_generations_but_a_peer_sends_at_most_four(
    now: datetime,
) -> None:
    """Attack: a peer floods the path builder with intermediates; the site's own CAs are not it."""
    root, _, device = _hierarchy(now)
    root_key = generate_tls_key()
    generations = [
        make_issuing_ca(
            "device", generate_tls_key().public_key(), root, root_key, now, generation=g
        )
        for g in range(2, 31)
    ]
    cert = device.issue_csr(device_csr("dev-1"), device_profile(), now)
    chain = verify_client_chain(cert, [], [root], now, site_cas=[*generations, device.certificate])
    assert chain.chain[1] == device.certificate
    with pytest.raises(ChainError, match="peer sent 5 intermediates; the limit is 4"):
        verify_client_chain(cert, [device.certificate] * 5, [root], now)
    # Only the generation that issued the leaf reaches the path builder, not
    # another key under the same name.
    namesake = make_issuing_ca("device", generate_tls_key().public_key(), root, root_key, now)
    assert namesake.subject == device.certificate.subject
    assert issuers_of(cert, [*generations, namesake, device.certificate]) == [device.certificate]


def test_device_cert_cannot_act_as_server(now: datetime) -> None:
    root, _, device = _hierarchy(now)
    cert = device.issue_csr(device_csr("dev-1"), device_profile(), now)
    with pytest.raises(ChainError):
        verify_server_chain(cert, [device.certificate], [root], "localhost", now)


def _force_issue(
    authority: Authority, san: list[x509.GeneralName], kind: str, now: datetime
) -> x509.Certificate:
    """Sign names no profile would accept, as a stolen issuing key could."""
    key = generate_tls_key()
    profile = server_profile(["localhost"]) if kind == "server" else device_profile()
    request = ApprovedRequest(
        profile=profile, public_key=key.public_key(), subject_id="x", san=tuple(san)
    )
    return authority.issue(request, now)


def test_name_constraints_stop_a_stolen_server_ca_key(now: datetime) -> None:
    """Attack: the server CA key signs a certificate for a host it was not constrained to."""
    root, server, _ = _hierarchy(now)
    cert = _force_issue(server, [x509.DNSName("bank.example")], "server", now)
    with pytest.raises(ChainError):
        verify_server_chain(cert, [server.certificate], [root], "bank.example", now)


def test_name_constraints_stop_a_stolen_device_ca_key(now: datetime) -> None:
    """Attack: the device CA key mints a server certificate for the home server."""
    import ipaddress

    root, _, device = _hierarchy(now)
    cert = _force_issue(device, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], "server", now)
    with pytest.raises(ChainError):
        verify_server_chain(cert, [device.certificate], [root], "127.0.0.1", now)


def test_revocation_by_device_and_serial_shows_in_signed_crl(now: datetime) -> None:
    _, _, device = _hierarchy(now)
    a1 = device.issue_csr(device_csr("a"), device_profile(), now)
    a2 = device.issue_csr(device_csr("a"), device_profile(), now)
    b = device.issue_csr(device_csr("b"), device_profile(), now)
    c = device.issue_csr(device_csr("c"), device_profile(), now)
    assert device.revoke_device("a", now, "keyCompromise") == 2
    device.revoke_serial(b.serial_number, now)
    crl_pem = device.crl(now).public_bytes(serialization.Encoding.PEM)
    crl = verify_crl(crl_pem, device.certificate, now)
    for cert in (a1, a2, b):
        with pytest.raises(RevokedError):
            check_not_revoked(cert, crl)
    check_not_revoked(c, crl)


def test_crl_from_another_ca_or_expired_is_refused(now: datetime) -> None:
    _, server, device = _hierarchy(now)
    _, _, other_device = _hierarchy(now)
    crl = device.crl(now).public_bytes(serialization.Encoding.DER)
    with pytest.raises(PKIError, match=r"not issued by this CA|signature"):
        verify_crl(crl, server.certificate, now)
    with pytest.raises(PKIError, match="signature does not verify"):
        verify_crl(crl, other_device.certificate, now)
    with pytest.raises(PKIError, match="expired"):
        verify_crl(crl, device.certificate, now + timedelta(days=8))
    with pytest.raises(PKIError, match="cannot be parsed"):
        verify_crl(b"garbage", device.certificate, now)


def test_revoking_an_unknown_serial_or_device_is_refused(now: datetime) -> None:
    _, server, device = _hierarchy(now)
    with pytest.raises(PKIError, match="not issued by this CA"):
        device.revoke_serial(12345, now)
    cert = server.issue_csr(make_csr(dns=["localhost"]), server_profile(["localhost"]), now)
    with pytest.raises(PKIError, match="not issued by this CA"):
        device.revoke_serial(cert.serial_number, now)
    with pytest.raises(PKIError, match="no certificate was issued"):
        device.revoke_device("nobody", now)


def test_ceremony_revoke_writes_crls(data_dir: Path, now: datetime) -> None:
    chain = ceremonies.issue_certificate(data_dir, device_csr("d1"), "device", now)
    assert ceremonies.revoke(data_dir, now, device_id="d1") == 1
    dd = DataDir(data_dir)
    crl = verify_crl(dd.pki_path("device-ca.crl.pem").read_bytes(), chain[1], now)
    with pytest.raises(RevokedError):
        check_not_revoked(chain[0], crl)
    # The record survives a reload from disk.
    record = dd.ledger().get(chain[0].serial_number)
    assert record is not None
    assert record.revoked_at == now
