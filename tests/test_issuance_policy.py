"""Issuance from CSRs: the profile accepts what it should and names what it refuses."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homing.errors import PKIError, PolicyError
from homing.pki import Authority, MemoryLedger, generate_tls_key, make_issuing_ca, make_root_ca
from homing.pki.profiles import approve_csr, device_profile, server_profile
from tests.conftest import device_csr, make_csr

HOSTS = ["localhost", "127.0.0.1"]


@pytest.fixture
def hierarchy(now: datetime) -> dict[str, Authority]:
    root_key = generate_tls_key()
    root = make_root_ca(root_key, now)
    ledger = MemoryLedger()
    server_key, device_key = generate_tls_key(), generate_tls_key()
    server_ca = make_issuing_ca("server", server_key.public_key(), root, root_key, now, hosts=HOSTS)
    device_ca = make_issuing_ca("device", device_key.public_key(), root, root_key, now)
    return {
        "server": Authority(server_ca, server_key, ledger),
        "device": Authority(device_ca, device_key, ledger),
    }


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType:
    return cert.extensions.get_extension_for_class(kind).value


def test_device_csr_is_issued_with_device_profile(
    hierarchy: dict[str, Authority], now: datetime
) -> None:
    cert = hierarchy["device"].issue_csr(device_csr("dev-1"), device_profile(), now)
    san = _ext(cert, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:homing:device:dev-1"]
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    assert _ext(cert, x509.BasicConstraints) == x509.BasicConstraints(ca=False, path_length=None)
    # Default device validity is one year (plus the small back-dating).
    assert cert.not_valid_after_utc - now == timedelta(days=365)
    # 20-byte serials: positive, at most 159 bits, and in practice well above 64 bits.
    assert 0 < cert.serial_number < 2**159
    assert cert.serial_number.bit_length() > 120


def test_device_id_may_come_from_the_request_instead_of_the_csr(
    hierarchy: dict[str, Authority], now: datetime
) -> None:
    cert = hierarchy["device"].issue_csr(make_csr(), device_profile(), now, device_id="dev-2")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-2"


def test_configurable_device_validity(hierarchy: dict[str, Authority], now: datetime) -> None:
    cert = hierarchy["device"].issue_csr(device_csr("d"), device_profile(timedelta(days=7)), now)
    assert cert.not_valid_after_utc - now == timedelta(days=7)


def test_server_csr_gets_server_auth_and_its_names(
    hierarchy: dict[str, Authority], now: datetime
) -> None:
    csr = make_csr(dns=["LOCALHOST"], ips=["127.0.0.1"], der=True)
    cert = hierarchy["server"].issue_csr(csr, server_profile(HOSTS), now)
    san = _ext(cert, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]
    assert cert.not_valid_after_utc - now == timedelta(days=30)


def test_serials_are_never_reused(hierarchy: dict[str, Authority], now: datetime) -> None:
    serials = {
        hierarchy["device"].issue_csr(device_csr(f"d{i}"), device_profile(), now).serial_number
        for i in range(200)
    }
    assert len(serials) == 200


def test_ledger_refuses_a_duplicate_serial(hierarchy: dict[str, Authority], now: datetime) -> None:
    authority = hierarchy["device"]
    cert = authority.issue_csr(device_csr("d"), device_profile(), now)
    record = authority.ledger.get(cert.serial_number)
    assert record is not None
    with pytest.raises(PKIError, match="already issued"):
        authority.ledger.record(record)


@pytest.mark.parametrize(
    ("csr_factory", "profile_kind", "reason"),
    [
        (
            lambda: make_csr(ec.generate_private_key(ec.SECP384R1()), uris=["urn:homing:device:a"]),
            "device",
            "curve secp384r1 is not allowed",
        ),
        (lambda: _rsa_csr(), "device", "RSA keys are not allowed"),
        (lambda: _ed25519_csr(), "device", "Ed25519 is not allowed"),
        (lambda: make_csr(dns=["evil.example"]), "server", "not a configured server host"),
        (lambda: make_csr(ips=["10.0.0.1"]), "server", "not a configured server host"),
        (lambda: make_csr(), "server", "must name its host names"),
        (lambda: make_csr(uris=["urn:homing:device:a"]), "server", "may not carry"),
        (lambda: make_csr(), "device", "must carry a URI SAN"),
        (
            lambda: make_csr(uris=["urn:homing:device:a"], dns=["localhost"]),
            "device",
            "only name the device by a URI SAN",
        ),
        (
            lambda: make_csr(uris=["urn:homing:device:a", "urn:homing:device:b"]),
            "device",
            "exactly one",
        ),
        (lambda: make_csr(uris=["https://example.org/a"]), "device", "not a homing device name"),
        (lambda: make_csr(uris=["urn:homing:device:../x"]), "device", "invalid device id"),
        (lambda: make_csr(uris=["urn:homing:device:%C3%B6"]), "device", "invalid device id"),
        (lambda: _tampered_csr(), "device", "signature does not verify"),
        (lambda: b"not a csr", "device", "cannot be parsed"),
        (
            lambda: (
                b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            ),
            "device",
            "cannot be parsed",
        ),
        (lambda: b"0" * 20000, "device", "the limit is"),
    ],
)
def test_policy_refuses_with_the_reason(
    hierarchy: dict[str, Authority], now: datetime, csr_factory, profile_kind: str, reason: str
) -> None:
    authority = hierarchy[profile_kind]
    profile = server_profile(HOSTS) if profile_kind == "server" else device_profile()
    with pytest.raises(PolicyError, match=reason):
        authority.issue_csr(csr_factory(), profile, now)
    assert authority.ledger.by_subject("a") == []


def test_csr_naming_another_device_than_the_request_is_refused(
    hierarchy: dict[str, Authority], now: datetime
) -> None:
    with pytest.raises(PolicyError, match="names device 'a' but the request is for 'b'"):
        hierarchy["device"].issue_csr(device_csr("a"), device_profile(), now, device_id="b")


@pytest.mark.parametrize("device_id", ["../x", ".", "/", "ö", "", "a/b", "-a", "x" * 65])
def test_unsafe_device_ids_are_refused(
    hierarchy: dict[str, Authority], now: datetime, device_id: str
) -> None:
    with pytest.raises(PolicyError, match="invalid device id"):
        hierarchy["device"].issue_csr(make_csr(), device_profile(), now, device_id=device_id)


def test_profile_can_admit_rsa_above_a_minimum(now: datetime) -> None:
    from dataclasses import replace

    profile = replace(device_profile(), min_rsa_bits=3072)
    with pytest.raises(PolicyError, match="2048 bits is below the minimum of 3072"):
        approve_csr(_rsa_csr(), profile, device_id="a")


def _rsa_csr() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:homing:device:a")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _ed25519_csr() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:homing:device:a")]),
            critical=False,
        )
        .sign(key, None)
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _tampered_csr() -> bytes:
    """A CSR whose signed body was altered after signing: proof of possession fails."""
    der = bytearray(device_csr("a", der=True))
    index = der.find(b"urn:homing:device:a")
    der[index + len("urn:homing:device:")] = ord("b")
    return bytes(der)
