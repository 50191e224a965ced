"""Sign-then-combine ceremonies: each key holder signs on their own machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from homing.cli._base import _data_option, _fail, _now, _operator_actor, _site, cli, out

HOLDER_PASSPHRASE_ENV = "HOMING_HOLDER_PASSPHRASE"  # noqa: S105 - the variable's name


@cli.group()
def ceremony() -> None:
    """Threshold signing across people and machines: keygen, propose, sign, publish."""


def _holder_passphrase(confirm: bool) -> bytes:
    """The key holder's own passphrase: never the server's."""
    from homing.pki.keystore import PASSPHRASE_ENV

    value = os.environ.get(HOLDER_PASSPHRASE_ENV)
    if not value and sys.stdin.isatty():
        value = click.prompt("Your key passphrase", hide_input=True, confirmation_prompt=confirm)
    if not value:
        _fail(f"set {HOLDER_PASSPHRASE_ENV} (your own passphrase, not the server's)")
    assert value is not None
    if value == os.environ.get(PASSPHRASE_ENV):
        _fail(f"a key holder's passphrase must not be the server's ({PASSPHRASE_ENV})")
    return value.encode("utf-8")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        _fail(f"cannot read {what} {path}: {e.strerror}")
        raise AssertionError from e


_path = click.Path(path_type=Path, dir_okay=False)


@ceremony.command("keygen")
@click.option("--out", "out_path", type=_path, required=True, help="Your private key file.")
@click.option("--public-out", type=_path, required=True, help="The public key to hand over.")
def ceremony_keygen(out_path: Path, public_out: Path) -> None:
    """A key holder makes their own signing key, under their own passphrase."""
    from homing.ceremonies.threshold import holder_keygen

    keyid = holder_keygen(out_path, public_out, _holder_passphrase(confirm=True))
    out.print(f"key {keyid} written to {out_path}; hand over {public_out}")


@ceremony.command("propose-root")
@_data_option
@click.option("--out", "out_path", type=_path, required=True, help="The proposal file.")
@click.option("--key", "keys", type=_path, multiple=True, help="A new root public key (repeat).")
@click.option("--threshold", type=int, help="Signatures the new root needs.")
@click.option(
    "--targets-key", "targets_keys", type=_path, multiple=True, help="Hand targets to holders."
)
@click.option(
    "--targets-threshold", type=int, help="Signatures the targets role needs (default: as now)."
)
@click.option(
    "--new-online-keys", is_flag=True, help="Make and name the next snapshot and timestamp keys."
)
def ceremony_propose_root(
    data: Path,
    out_path: Path,
    keys: tuple[Path, ...],
    threshold: int | None,
    targets_keys: tuple[Path, ...],
    targets_threshold: int | None,
    new_online_keys: bool,
) -> None:
    """Prepare root N+1 for the holders to sign (new keys, threshold, or a renewal)."""
    from homing.ceremonies.threshold import propose_root
    from homing.fsutil import atomic_write
    from homing.trust.proposal import describe

    proposal = propose_root(
        _site(data),
        _now(),
        new_keys=[(str(p), _read(p, "public key")) for p in keys],
        threshold=threshold,
        targets_keys=[(str(p), _read(p, "public key")) for p in targets_keys],
        targets_threshold=targets_threshold,
        new_online_keys=new_online_keys,
    )
    atomic_write(out_path, proposal.to_bytes())
    for line in describe(proposal):
        out.print(f"  {line}")
    out.print(f"proposal written to {out_path} (sha256 {proposal.digest})")


@ceremony.command("propose-targets")
@_data_option
@click.option("--out", "out_path", type=_path, required=True, help="The proposal file.")
def ceremony_propose_targets(data: Path, out_path: Path) -> None:
    """Prepare targets N+1 with the site's current pin policy for the holders to sign."""
    from homing.ceremonies.threshold import propose_targets
    from homing.fsutil import atomic_write
    from homing.trust.proposal import describe

    proposal = propose_targets(_site(data), _now())
    atomic_write(out_path, proposal.to_bytes())
    for line in describe(proposal):
        out.print(f"  {line}")
    out.print(f"proposal written to {out_path} (sha256 {proposal.digest})")


@ceremony.command("sign")
@click.argument("proposal_file", type=_path)
@click.option("--key", "keys", type=_path, multiple=True, required=True, help="Your key file.")
@click.option("--out", "out_path", type=_path, required=True, help="Your signature file.")
@click.option("--yes", is_flag=True, help="Sign without asking (after reading the changes).")
def ceremony_sign(proposal_file: Path, keys: tuple[Path, ...], out_path: Path, yes: bool) -> None:
    """Read what a proposal changes, in words, and sign it with your own key."""
    from homing.ceremonies.threshold import sign
    from homing.fsutil import atomic_write
    from homing.trust.proposal import Proposal, describe

    proposal = Proposal.from_bytes(_read(proposal_file, "proposal"))
    out.print(f"proposal sha256 {proposal.digest}:")
    for line in describe(proposal):
        out.print(f"  {line}")
    if not yes and not click.confirm("Sign it?", default=False):
        _fail("not signed")
    signature = sign(proposal, keys, _holder_passphrase(confirm=False))
    atomic_write(out_path, signature.to_bytes())
    ids = ", ".join(s.keyid[:16] for s in signature.signatures)
    out.print(f"signed by {ids}; hand {out_path} to the operator")


@ceremony.command("publish")
@_data_option
@click.argument("proposal_file", type=_path)
@click.argument("signature_files", type=_path, nargs=-1, required=True)
def ceremony_publish(data: Path, proposal_file: Path, signature_files: tuple[Path, ...]) -> None:
    """Check every signature and the threshold (python-tuf), then publish."""
    from homing.ceremonies.threshold import publish
    from homing.trust.proposal import DetachedSignature, Proposal

    proposal = Proposal.from_bytes(_read(proposal_file, "proposal"))
    signatures = [DetachedSignature.from_bytes(_read(p, "signature")) for p in signature_files]
    version = publish(_site(data), _now(), proposal, signatures, actor=_operator_actor())
    out.print(f"published {proposal.role} version {version}")


@ceremony.command("propose-ca")
@_data_option
@click.option(
    "--kind",
    type=click.Choice(["server", "device"]),
    required=True,
    help="Which issuing CA the request is for.",
)
@click.option("--out", "out_path", type=_path, required=True, help="The request file.")
def ceremony_propose_ca(data: Path, kind: str, out_path: Path) -> None:
    """Ask the offline site to certify the issuing CA's backup key (server side)."""
    from homing.ceremonies.offline_ca import propose_ca
    from homing.fsutil import atomic_write

    request = propose_ca(_site(data), kind, _now())
    atomic_write(out_path, request.to_bytes())
    for line in request.describe():
        out.print(f"  {line}")
    out.print(f"request written to {out_path}: carry it to the offline site")


@ceremony.command("sign-ca")
@click.argument("request_file", type=_path)
@click.option("--root-ca-key", "keys", type=_path, multiple=True, required=True,
              help="A root CA key file (one per root the request names).")  # fmt: skip
@click.option("--out", "out_path", type=_path, required=True, help="The certificates file.")
@click.option("--yes", is_flag=True, help="Sign without asking (after reading the request).")
def ceremony_sign_ca(request_file: Path, keys: tuple[Path, ...], out_path: Path, yes: bool) -> None:
    """At the offline site: read a CA request in words and certify it with the root CA keys."""
    from cryptography.hazmat.primitives import serialization

    from homing.ceremonies.offline_ca import sign_ca
    from homing.fsutil import atomic_write
    from homing.pki.ca_request import CaRequest

    request = CaRequest.from_bytes(_read(request_file, "CA request"))
    for line in request.describe():
        out.print(f"  {line}")
    if not yes and not click.confirm("Certify it?", default=False):
        _fail("not signed")
    certs = sign_ca(request, keys, _holder_passphrase(confirm=False), _now())
    atomic_write(out_path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    out.print(f"{len(certs)} certificate(s) written to {out_path}: carry them back to the server")


@ceremony.command("import-ca")
@_data_option
@click.argument("request_file", type=_path)
@click.argument("certificates_file", type=_path)
@click.option("--force", is_flag=True, help="Promote even if live devices would be stranded.")
@click.option("--reason", help="Why a forced promotion is worth stranding them (audited).")
def ceremony_import_ca(
    data: Path, request_file: Path, certificates_file: Path, force: bool, reason: str | None
) -> None:
    """Check the offline site's CA certificates and promote the issuing CA with them."""
    from homing.ceremonies.offline_ca import import_ca
    from homing.errors import ChainError
    from homing.pki.ca_request import CaRequest
    from homing.pki.validate import load_certificates_pem

    if force and not (reason and reason.strip()):
        _fail("--force needs --reason: a forced promotion is audited with why")
    request = CaRequest.from_bytes(_read(request_file, "CA request"))
    try:
        certs = load_certificates_pem(_read(certificates_file, "certificates"))
    except ChainError as e:
        _fail(f"the certificates cannot be read: {e}")
        raise AssertionError from e
    generation = import_ca(
        _site(data), _now(), request, certs, actor=_operator_actor(),
        force_reason=reason if force else None,
    )  # fmt: skip
    out.print(f"{request.kind}-issuing CA generation {generation} is active")
