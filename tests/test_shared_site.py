"""The published site shared through PostgreSQL, the signer lease, backup and restore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from homing import ceremonies
from homing.ceremonies.replicas import export_online_keys, join_replica
from homing.config import Expiries
from homing.errors import ConfigError, ConflictError
from homing.server.maintenance import maintain
from homing.server.signer import SignerLease, current_signer
from homing.site import DataDir, shared
from homing.site.backup import backup, restore
from homing.store.schema import audit_log, certificates, site_files
from tests.harness import (
    assert_one_error,
    homing_entry_point,
    postgres_database,
    run_homing,
    wait_until,
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def published(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[DataDir]:
    """An operator's site, published to a fresh PostgreSQL database."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    ceremonies.init(tmp_path / "site", datetime.now(UTC), hosts=["homing.test", "127.0.0.1"])
    dd = DataDir(tmp_path / "site", pg_url)
    assert shared.publish(dd, datetime.now(UTC), "test") == 1
    try:
        yield dd
    finally:
        dd.close()


def _replica(published: DataDir, tmp_path: Path, name: str) -> DataDir:
    keys = tmp_path / f"keys-{name}"
    export_online_keys(published, keys)
    assert published.db_url is not None
    return join_replica(
        tmp_path / name, published.db_url, keys, name, [f"{name}.homing.test"], datetime.now(UTC)
    )


def _tree(dd: DataDir) -> dict[str, bytes]:
    return {
        p.relative_to(dd.root).as_posix(): p.read_bytes()
        for top in ("pki", "repository")
        for p in (dd.root / top).rglob("*")
        if p.is_file() and p.name != "server-chain.pem"
    } | {"homing.json": dd.settings_path.read_bytes()}


def test_a_replica_serves_the_sites_bytes_and_follows_each_publication(
    published: DataDir, tmp_path: Path
) -> None:
    replica = _replica(published, tmp_path, "r1")
    try:
        assert _tree(replica) == _tree(published)
        # Its own certificate, for its own name and the site's, from the site's server CA.
        chain = replica.certificates("server-chain.pem")
        assert chain[0] != published.certificates("server-chain.pem")[0]
        chain[0].verify_directly_issued_by(replica.certificate("server-ca.pem"))
        assert not (replica.keys_dir / "root-ca.key.pem").exists()
        assert not (replica.keys_dir / "targets.key.pem").exists()
        version = ceremonies.refresh_timestamp(published, datetime.now(UTC))
        assert shared.publish(published, datetime.now(UTC), "test") == 2
        assert shared.pull(replica) == 2
        assert shared.pull(replica) is None  # nothing new: one query
        assert _tree(replica) == _tree(published)
        stamp = json.loads((replica.metadata_dir / "timestamp.json").read_bytes())
        assert stamp["signed"]["version"] == version
    finally:
        replica.close()


def test_a_host_that_missed_a_publication_cannot_publish_over_it(
    published: DataDir, tmp_path: Path
) -> None:
    replica = _replica(published, tmp_path, "r1")
    try:
        ceremonies.refresh_timestamp(published, datetime.now(UTC))
        shared.publish(published, datetime.now(UTC), "test")
        # The replica re-signs from its stale copy: publishing it would roll devices back.
        ceremonies.refresh_timestamp(replica, datetime.now(UTC))
        with pytest.raises(ConflictError, match="pull first"):
            shared.publish(replica, datetime.now(UTC), "test")
        with published.database().engine.connect() as conn:
            assert shared.published_generation(conn) is not None
            generation = shared.published_generation(conn)
        assert generation is not None
        assert generation[1] == 2
    finally:
        replica.close()


def test_another_sites_directory_is_neither_published_nor_overwritten(
    published: DataDir, tmp_path: Path
) -> None:
    foreign_dir = tmp_path / "foreign"
    ceremonies.init(foreign_dir, datetime.now(UTC))
    foreign = DataDir(foreign_dir, published.db_url)
    before = _tree(foreign)
    try:
        with pytest.raises(ConfigError, match="another site"):
            shared.publish(foreign, datetime.now(UTC), "attacker")
        with pytest.raises(ConfigError, match="another site"):
            shared.pull(foreign)
        assert _tree(foreign) == before
    finally:
        foreign.close()


def test_a_database_row_naming_a_path_outside_the_site_is_refused(
    published: DataDir, tmp_path: Path
) -> None:
    """Whoever can write the database must not get to write the replica's key store."""
    replica = _replica(published, tmp_path, "r1")
    key_before = (replica.keys_dir / "timestamp-1.key.pem").read_bytes()
    try:
        with published.database().engine.begin() as conn:
            for evil in ("keys/timestamp-1.key.pem", "pki/../keys/x.pem", "pki/server-chain.pem"):
                conn.execute(
                    insert(site_files).values(
                        path=evil, sha256="0" * 64, size=1, generation=9, content=b"x"
                    )
                )
            conn.execute(text("UPDATE site_publication SET generation = 9"))
        with pytest.raises(ConfigError, match="unsafe path"):
            shared.pull(replica)
        assert (replica.keys_dir / "timestamp-1.key.pem").read_bytes() == key_before
    finally:
        replica.close()


def test_only_the_signer_re_signs(published: DataDir, tmp_path: Path) -> None:
    settings = published.settings()
    due = datetime.now(UTC) + settings.expiries.timestamp * 0.9
    before = published.repository(settings).timestamp().signed.version
    assert not any("timestamp" in d for d in maintain(published, due, signer=False))
    assert published.repository(settings).timestamp().signed.version == before
    assert any("timestamp" in d for d in maintain(published, due, signer=True))
    assert published.repository(settings).timestamp().signed.version == before + 1


def test_the_signer_lease_is_one_holder_and_passes_on_when_its_session_dies(
    published: DataDir,
) -> None:
    db = published.database()
    first, second = SignerLease(db, "first"), SignerLease(db, "second")
    try:
        assert first.held()
        assert not second.held()
        assert current_signer(db) == "first"
        # The first signer's host vanishes: its session is cut.
        with db.engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'homing-signer:first'"
                )
            )
            conn.commit()
        assert not first.held()  # it knows it lost the lease and stops signing
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while not second.held():
            assert datetime.now(UTC) < deadline, "the lease was not passed on"
        assert current_signer(db) == "second"
        assert not first.held()
    finally:
        first.release()
        second.release()


def test_a_lost_session_reported_late_does_not_drop_the_lease_taken_again(
    published: DataDir,
) -> None:
    """The heartbeat that finds the old session dead may report it after the signer has
    already taken the lease again on a new one: the new one stays the signer."""
    db = published.database()
    lease = SignerLease(db, "first")
    try:
        assert lease.held()
        old = lease._session
        assert old is not None
        old.close()  # as the heartbeat does on a failed beat, before it reports the loss
        assert lease.held()  # taken again, on a new session
        assert lease._session is not old
        lease._lost(old, OSError("the old session did not answer"))
        assert lease.held()
        assert current_signer(db) == "first"
    finally:
        lease.release()
    assert current_signer(db) is None


def test_the_cli_publishes_and_follows_a_shared_site(published: DataDir, tmp_path: Path) -> None:
    """A ceremony run on a replica's host is published for every host; status says so."""
    replica = _replica(published, tmp_path, "r1")
    url = published.db_url
    assert url is not None
    try:
        refreshed = run_homing(
            "timestamp", "refresh", "--data", str(replica.root), env={"HOMING_DB": url}
        )
        assert refreshed.returncode == 0, refreshed.stderr
        assert "published generation 2" in refreshed.stderr
        status = run_homing("site", "status", "--data", str(published.root), "--db", url)
        assert status.returncode == 0, status.stderr
        assert "published generation 2" in status.stdout
        assert "this host: generation 1" in status.stdout
        republished = run_homing("site", "publish", "--data", str(published.root), "--db", url)
        assert republished.returncode == 0, republished.stderr
        assert "nothing to publish" in republished.stdout  # it pulled generation 2 first
        assert _tree(published) == _tree(replica)
        # A failed command publishes nothing.
        bad = run_homing("revoke", "ghost", "--data", str(replica.root), "--db", url)
        assert_one_error(bad, "ghost")
        with published.database().engine.connect() as conn:
            generation = shared.published_generation(conn)
        assert generation is not None
        assert generation[1] == 2
    finally:
        replica.close()


def test_a_ceremony_waits_for_another_hosts_change_saying_who_then_publishes(
    published: DataDir, tmp_path: Path
) -> None:
    """From outside: the operator sees whom the command waits for, and it goes on after."""
    replica = _replica(published, tmp_path, "r1")
    url = published.db_url
    assert url is not None
    env = {k: v for k, v in os.environ.items() if k != "HOMING_KEY_PASSPHRASE"}
    err = tmp_path / "refresh.err"
    try:
        with shared.site_change(published.database()), open(err, "wb") as out:
            command = subprocess.Popen(
                [homing_entry_point(), "timestamp", "refresh", "--data", str(replica.root)],
                env={**env, "HOMING_DB": url},
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
            wait_until(
                "the command to say whom it waits for",
                lambda: (
                    b"WARNING: waiting for the site-change lock, held by homing-site-change:"
                    in err.read_bytes()
                ),
            )
            assert command.poll() is None
        assert command.wait(timeout=120) == 0, err.read_text()
        assert "published generation 2" in err.read_text()
    finally:
        replica.close()


# A host that takes the site-change lock, pulls, then waits for a line before it changes
# the site and publishes: stopped in between, it is a host cut off mid-change.
_CUT_HOST = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from homing import ceremonies
from homing.errors import ConflictError
from homing.site import DataDir, shared
dd = DataDir(Path(sys.argv[1]), sys.argv[2])
with shared.site_change(dd.database()):
    shared.pull(dd)
    print("held", flush=True)
    sys.stdin.readline()
    ceremonies.refresh_timestamp(dd, datetime.now(UTC))
    try:
        shared.publish(dd, datetime.now(UTC), "cut-host")
    except ConflictError as e:
        print("refused:", e, flush=True)
    else:
        print("published", flush=True)
"""


def test_a_host_that_lost_the_lock_mid_change_cannot_publish_over_the_next_holder(
    published: DataDir, tmp_path: Path
) -> None:
    """Attack on the lock's fallback: a host stopped while holding it loses it, another
    publishes, and the first, woken, finds its publication refused, not written over."""
    from homing.store.bounded_session import SESSION_TIMEOUT

    replica = _replica(published, tmp_path, "r1")
    url = published.db_url
    assert url is not None
    env = {k: v for k, v in os.environ.items() if k != "HOMING_KEY_PASSPHRASE"}
    errors = tmp_path / "cut-host.err"
    with open(errors, "wb") as err:
        cut = subprocess.Popen(
            [sys.executable, "-c", _CUT_HOST, str(published.root), url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    assert cut.stdin is not None
    assert cut.stdout is not None
    try:
        assert cut.stdout.readline().strip() == b"held", errors.read_text()
        cut.send_signal(signal.SIGSTOP)
        with shared.site_change(replica.database(), wait=SESSION_TIMEOUT + 60):
            shared.pull(replica)
            ceremonies.refresh_timestamp(replica, datetime.now(UTC))
            generation = shared.publish(replica, datetime.now(UTC), "r1")
        assert generation is not None
        cut.send_signal(signal.SIGCONT)
        cut.stdin.write(b"go\n")
        cut.stdin.flush()
        said = cut.stdout.readline().decode()
        assert said.startswith("refused:"), said + errors.read_text()
        assert "pull first" in said
        with published.database().engine.connect() as conn:
            row = shared.published_generation(conn)
        assert row is not None
        assert row[1] == generation  # what the next holder published stands
    finally:
        cut.send_signal(signal.SIGCONT)
        cut.kill()
        cut.wait()
        cut.stdin.close()
        cut.stdout.close()
        replica.close()


def test_ten_rotations_of_each_kind_keep_the_exported_medium_to_the_sites_keys(
    published: DataDir, tmp_path: Path
) -> None:
    """The medium refreshed after every rotation grows with nothing: it never holds a key
    the site has destroyed, and its retired-generation keys are the site's current ones."""
    medium = tmp_path / "medium"
    for _ in range(10):
        now = datetime.now(UTC)
        for kind in ("device", "server"):
            ceremonies.rotate_issuing_ca(published, kind, now)
        ceremonies.rotate_online_keys(published, now)
        export_online_keys(published, medium)
        settings = published.settings()
        store = published.keystore(settings)
        held = sorted(p.name.removesuffix(".key.pem") for p in medium.glob("*.key.pem"))
        assert [n for n in held if not store.exists(n)] == []
        server, online = settings.server_ca_generation, settings.online_key_generation
        assert {n for n in held if n.startswith("server-ca-")} == {
            f"server-ca-g{server}",
            f"server-ca-g{server + 1}",
        }
        assert {n for n in held if n.startswith(("snapshot-", "timestamp-"))} == {
            f"snapshot-{online}",
            f"timestamp-{online}",
        }
    assert published.settings().server_ca_generation == 11


def test_serving_on_sqlite_is_not_shared(tmp_path: Path, data_dir: Path) -> None:
    result = run_homing(
        "site", "publish", "--data", str(data_dir), "--db", f"sqlite:///{tmp_path}/x.db"
    )
    assert_one_error(result, "needs PostgreSQL")


def test_backup_restores_a_postgresql_site_onto_sqlite(published: DataDir, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ceremonies.issue_certificate(published, _device_csr("dev-1"), "device", now, device_id="dev-1")
    ceremonies.revoke(published, now, device_id="dev-1")
    archive = tmp_path / "site.tar.gz"
    summary = backup(published, archive, now)
    assert summary.tables["certificates"] >= 1
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        backup(published, archive, now)
    target = DataDir(tmp_path / "restored", f"sqlite:///{tmp_path / 'restored.db'}")
    try:
        restore(archive, target)
        assert _tree(target) == _tree(published)
        assert (target.keys_dir / "timestamp-1.key.pem").read_bytes() == (
            published.keys_dir / "timestamp-1.key.pem"
        ).read_bytes()
        with published.database().engine.connect() as a, target.database().engine.connect() as b:
            for table in (certificates, audit_log):
                rows_a = a.execute(select(table).order_by(*table.primary_key.columns)).all()
                rows_b = b.execute(select(table).order_by(*table.primary_key.columns)).all()
                assert rows_a == rows_b
        # Into a non-empty database: refused, nothing written.
        again = DataDir(tmp_path / "again", f"sqlite:///{tmp_path / 'restored.db'}")
        with pytest.raises(ConfigError, match="not empty"):
            restore(archive, again)
        again.close()
        assert not (tmp_path / "again" / "homing.json").exists()
    finally:
        target.close()


def test_a_tampered_backup_is_refused_before_anything_is_written(
    published: DataDir, tmp_path: Path
) -> None:
    archive = tmp_path / "site.tar.gz"
    backup(published, archive, datetime.now(UTC))
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive, "r:gz") as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member)
            assert data is not None
            content = data.read()
            if member.name == "site/pki/root-ca.pem":
                content = content.replace(b"A", b"B", 1)
            member.size = len(content)
            import io

            dst.addfile(member, io.BytesIO(content))
    target = DataDir(tmp_path / "restored", f"sqlite:///{tmp_path / 'restored.db'}")
    try:
        with pytest.raises(ConfigError, match="SHA-256"):
            restore(tampered, target)
        assert not (tmp_path / "restored").exists()
    finally:
        target.close()
    with published.database().engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(site_files)).scalar_one() > 0


def _device_csr(device_id: str) -> bytes:
    from tests.conftest import device_csr

    return device_csr(device_id)


def test_expiries_are_kept_by_the_publication(published: DataDir) -> None:
    """The settings travel too: a replica signs with the site's expiries, not its defaults."""
    settings = published.settings()
    settings.expiry_days["timestamp"] = Expiries().timestamp.total_seconds() / 86400 / 2
    published.save_settings(settings)
    assert shared.publish(published, datetime.now(UTC), "test") == 2
    with published.database().engine.connect() as conn:
        content = conn.execute(
            select(site_files.c.content).where(site_files.c.path == "homing.json")
        ).scalar_one()
    assert (
        json.loads(bytes(content))["expiry_days"]["timestamp"] == settings.expiry_days["timestamp"]
    )


def test_a_replica_follows_rotations_once_it_has_the_new_keys(
    published: DataDir, tmp_path: Path
) -> None:
    """Rotations on the operator's host make keys there; a replica lacking them says so,
    never takes the signer's lease without the signing keys, and catches up on import."""
    from homing.ceremonies.replicas import missing_online_keys
    from homing.server.upkeep import Upkeep

    keys = tmp_path / "keys-r1"
    replica = _replica(published, tmp_path, "r1")
    upkeep = Upkeep(replica, None)
    try:
        for _ in range(2):
            ceremonies.rotate_issuing_ca(published, "device", datetime.now(UTC))
        assert shared.publish(published, datetime.now(UTC), "test") == 2
        assert upkeep.follow() == 2
        assert missing_online_keys(replica) == ["device-ca-g3", "device-ca-g4"]
        # Without its signing key a replica must not hold the lease: nobody would sign.
        (replica.keys_dir / "timestamp-1.key.pem").unlink()
        upkeep.maintain(datetime.now(UTC))
        assert current_signer(replica.database()) is None
        exported = run_homing(
            "keystore", "export-online", "--data", str(published.root), "--to", str(keys)
        )
        assert exported.returncode == 0, exported.stderr
        assert "device-ca-g3" in exported.stdout
        imported = run_homing(
            "replica", "import-keys", "--data", str(replica.root), "--keys", str(keys)
        )
        assert imported.returncode == 0, imported.stderr
        assert "device-ca-g3" in imported.stdout
        assert "timestamp-1" in imported.stdout
        assert missing_online_keys(replica) == []
        upkeep.maintain(datetime.now(UTC))
        assert current_signer(replica.database()) == "r1"
        # A server CA rotation destroys the retired generation's key on the operator's
        # host; the next export takes it off the medium, and the import destroys the
        # replica's copy, so no host keeps a key nothing may use.
        upkeep.lease.release()
        shared.pull(published)  # what the replica published as the signer
        ceremonies.rotate_issuing_ca(published, "server", datetime.now(UTC))
        ceremonies.rotate_online_keys(published, datetime.now(UTC))
        for name in ("server-ca-g1", "timestamp-1", "snapshot-1"):
            assert not published.keystore(published.settings()).exists(name)
        generation = shared.publish(published, datetime.now(UTC), "test")
        assert generation is not None
        assert upkeep.follow() == generation
        exported = run_homing(
            "keystore", "export-online", "--data", str(published.root), "--to", str(keys)
        )
        assert exported.returncode == 0, exported.stderr
        said = " ".join(exported.stdout.split())
        assert "(destroyed on this host): server-ca-g1, snapshot-1, timestamp-1" in said
        assert not (keys / "server-ca-g1.key.pem").exists()
        assert not (keys / "timestamp-1.key.pem").exists()
        imported = run_homing(
            "replica", "import-keys", "--data", str(replica.root), "--keys", str(keys)
        )
        assert imported.returncode == 0, imported.stderr
        said = " ".join(imported.stdout.split())
        assert "imported server-ca-g3, snapshot-2, timestamp-2" in said
        assert "destroyed retired keys: server-ca-g1, snapshot-1, timestamp-1" in said
        assert not (replica.keys_dir / "server-ca-g1.key.pem").exists()
        assert not (replica.keys_dir / "timestamp-1.key.pem").exists()
        assert missing_online_keys(replica) == []
    finally:
        upkeep.close()
        replica.close()


def test_a_published_file_that_fails_its_digest_is_refused(
    published: DataDir, tmp_path: Path
) -> None:
    """Attack: a database writer swaps a file's bytes and keeps its recorded SHA-256."""
    replica = _replica(published, tmp_path, "r1")
    # A replica that needs the file (a new one, or one that lost it) fetches it.
    (replica.pki_dir / "root-ca.pem").unlink()
    try:
        with published.database().engine.begin() as conn:
            conn.execute(
                site_files.update()
                .where(site_files.c.path == "pki/root-ca.pem")
                .values(content=b"-----BEGIN CERTIFICATE-----\nforged\n", generation=2)
            )
            conn.execute(text("UPDATE site_publication SET generation = 2"))
        with pytest.raises(ConflictError, match="digest"):
            shared.pull(replica, exact=True)
        assert not (replica.pki_dir / "root-ca.pem").exists()  # nothing forged was written
    finally:
        replica.close()


def test_a_backup_with_an_entry_outside_the_site_is_refused(tmp_path: Path) -> None:
    """Attack: an archive entry that climbs out of the data directory (../)."""
    import io

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("site/../../outside.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    target = DataDir(tmp_path / "restored", f"sqlite:///{tmp_path / 'restored.db'}")
    try:
        with pytest.raises(ConfigError, match="unsafe entry"):
            restore(evil, target)
    finally:
        target.close()
    assert not (tmp_path / "outside.txt").exists()
    assert not (tmp_path / "restored").exists()


def test_a_signer_whose_pass_fails_lets_another_sign(published: DataDir, tmp_path: Path) -> None:
    """A signer that holds the lease but cannot sign (its timestamp key is damaged) must
    not keep the lease while the timestamp expires: it lets go, and the next one signs."""
    from homing.errors import HomingError
    from homing.server.upkeep import Upkeep

    broken, healthy = _replica(published, tmp_path, "r1"), _replica(published, tmp_path, "r2")
    # Time is moved by hand here: the clock guard would (rightly) refuse it.
    first = Upkeep(broken, None, guard_clock=False)
    second = Upkeep(healthy, None, guard_clock=False)
    try:
        (broken.keys_dir / "timestamp-1.key.pem").write_bytes(b"not a key")
        due = datetime.now(UTC) + broken.settings().expiries.timestamp * 0.9
        with pytest.raises(HomingError):
            first.maintain(due)
        assert current_signer(broken.database()) is None
        done = second.maintain(due)
        assert any("timestamp" in item for item in done)
        assert current_signer(healthy.database()) == "r2"
    finally:
        first.close()
        second.close()
        broken.close()
        healthy.close()
