"""What the server does by itself so that nothing expires unnoticed.

Run by one process per replica (the supervisor). Every replica renews its
own server certificate at two thirds of its lifetime. The signer (the only
replica of a shared site that signs, homing.server.signer) also re-signs the
timestamp when half its lifetime is gone (and the snapshot likewise), keeps
the device CRL current, evaluates rollouts and prunes check-ins. Workers
pick up the new files through their reload watch.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from homing import ceremonies
from homing.site import DataDir, Settings
from homing.site.lock import ceremony_lock

__all__ = ["maintain"]

log = logging.getLogger(__name__)

# What the audit log names as the actor of the server's own re-signing.
ACTOR = "server:maintenance"


# How far in the future something this server made may start before it is
# taken for a clock accident and replaced (homing.operations.clock).
FUTURE_SLACK = timedelta(minutes=5)

# Check-in rows deleted per transaction when pruning.
PRUNE_BATCH = 5000


def maintain(
    data: Path | DataDir,
    now: datetime,
    *,
    checkin_retention: timedelta | None = None,
    signer: bool = True,
) -> list[str]:
    """Do whatever is due at ``now``; returns what was done, for logs and tests.

    Every replica renews its own TLS certificate. Only the ``signer`` (one
    replica of a shared site, homing.server.signer) re-signs the online
    roles and the CRL, evaluates rollouts and prunes check-ins:
    ``checkin_retention``: rows older than this are deleted (None keeps them
    all); each device's last known state is kept in its own row.
    """
    done: list[str] = []
    dd = data if isinstance(data, DataDir) else DataDir(data)
    # One lock from reading the settings to the last signature: a ceremony
    # running now finishes first, or waits for this pass (homing.site.lock).
    with ceremony_lock(dd.root, "server maintenance"):
        settings = dd.settings()
        if signer:
            done += _sign_online_roles(dd, settings, now)
        done += _renew_own_certificate(dd, settings, now)
        if signer:
            done += _tend(dd, now, checkin_retention)
    if not isinstance(data, DataDir):
        dd.close()
    for item in done:
        log.info("maintenance: re-signed %s", item)
    return done


def _renew_own_certificate(dd: DataDir, settings: Settings, now: datetime) -> list[str]:
    """At two thirds of its lifetime, once its issuer is no longer the active server CA,
    or when it is not valid yet (made while the clock was ahead: devices refuse it)."""
    leaf = dd.certificates("server-chain.pem")[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    due = now >= leaf.not_valid_before_utc + lifetime * 2 / 3
    if leaf.not_valid_before_utc > now + FUTURE_SLACK:
        log.warning(
            "the server certificate is valid only from %s (made while the clock was ahead): "
            "replacing it",
            leaf.not_valid_before_utc.isoformat(),
        )
        due = True
    if not due and settings.serving == "private":
        try:
            leaf.verify_directly_issued_by(dd.certificate("server-ca.pem"))
        except (ValueError, TypeError, InvalidSignature):
            # Another host rotated the server CA: this replica follows.
            due = True
    if not due:
        return []
    if settings.serving == "acme":
        # The public CA may be unreachable for a while: the certificate
        # still has a third of its life, so log and try again next pass.
        from homing.ceremonies.acme import acme_issue
        from homing.errors import HomingError

        try:
            new = acme_issue(dd, now, actor=ACTOR)
        except HomingError as e:
            log.warning("maintenance: ACME renewal failed, will retry: %s", e)
            return []
        return [f"server certificate {new.serial_number:x} (ACME)"]
    new = ceremonies.rotate_server_cert(dd, now, actor=ACTOR)
    return [f"server certificate {new.serial_number:x}"]


def _online_roles_signed_in_future(dd: DataDir, now: datetime) -> bool:
    """Whether the newest online signature was dated after ``now`` (the clock was ahead).

    Its expiry alone cannot tell: an operator may sign a long timestamp on
    purpose (``timestamp refresh --expires-in``) before planned downtime.
    """
    from sqlalchemy import select

    from homing.store.schema import audit_log

    with dd.database().engine.connect() as conn:
        at = conn.execute(
            select(audit_log.c.at)
            .where(audit_log.c.action.in_(("refresh_timestamp", "refresh_snapshot")))
            .order_by(audit_log.c.id.desc())
            .limit(1)
        ).scalar()
    return at is not None and at > now + FUTURE_SLACK


def _sign_online_roles(dd: DataDir, settings: Settings, now: datetime) -> list[str]:
    """Re-sign the snapshot (and so the timestamp), or the timestamp, at half their lifetime,
    or at once when they were signed at a time still ahead (a clock accident: they would
    live too long, a stolen copy with them)."""
    repo = dd.repository(settings)
    expiries = settings.expiries
    future = _online_roles_signed_in_future(dd, now)
    if future:
        log.warning("the online roles were signed at a time still ahead: re-signing them now")
    if future or repo.snapshot().signed.expires - now < expiries.snapshot / 2:
        return [f"snapshot v{ceremonies.refresh_snapshot(dd, now, actor=ACTOR)}"]
    if repo.timestamp().signed.expires - now < expiries.timestamp / 2:
        return [f"timestamp v{ceremonies.refresh_timestamp(dd, now, actor=ACTOR)}"]
    return []


def _tend(dd: DataDir, now: datetime, checkin_retention: timedelta | None) -> list[str]:
    """The device CRL, rollout evaluation, and pruning of check-ins and old metadata."""
    done: list[str] = []
    # Old consistent-snapshot versions and retired images serve no device
    # (homing.trust.repository.TrustRepository.prune); without this they
    # would grow with every re-signing and release for the site's life.
    pruned = dd.repository(dd.settings()).prune()
    if pruned:
        done.append(f"{pruned} old metadata and image files pruned")
    crl_path = dd.pki_path("device-ca.crl.pem")
    due = True
    if crl_path.exists():
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        next_update = crl.next_update_utc
        due = next_update is None or next_update - now < (next_update - crl.last_update_utc) / 2
        # Dated in the future (the clock was ahead): a verifier at the true time refuses it.
        due = due or crl.last_update_utc > now + FUTURE_SLACK
    if due:
        ceremonies.write_crl(dd, "device", now)
        done.append("device CRL")
    from homing.operations import rollouts
    from homing.store import firmware

    with dd.database().begin() as conn:
        for ro in firmware.list_rollouts(conn):
            if ro.status == "active":
                after = rollouts.evaluate(conn, ro.id, now)
                if (after.status, after.stage_index) != (ro.status, ro.stage_index):
                    done.append(f"rollout {ro.id} {after.status} at stage {after.stage_index + 1}")
    if checkin_retention is not None:
        from homing.store import device_contacts as contacts

        pruned = 0
        while True:
            with dd.database().begin() as conn:
                count = contacts.prune_checkins(conn, now - checkin_retention, PRUNE_BATCH)
            pruned += count
            if count < PRUNE_BATCH:
                break
        if pruned:
            done.append(f"{pruned} check-ins older than {checkin_retention.days} days pruned")
    return done
