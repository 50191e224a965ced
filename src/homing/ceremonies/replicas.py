"""A new replica of a shared site: its online keys, its own TLS certificate, the site's files.

Online keys reach a replica through its key store, never by copying a data
directory: ``export_online_keys`` writes the site's online keys (still
encrypted under the site's passphrase) and nothing else; the offline ones
(root CA, TUF root, targets, firmware) and the source host's own TLS key
stay behind. ``join_replica`` makes a data directory from the database's
publication and those keys, then issues the replica its own certificate for
its own names (which the server CA's name constraints must permit).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from homing.ceremonies._common import _open
from homing.ceremonies.retired_keys import destroy_retired_keys, is_generation_key
from homing.ceremonies.rotations import rotate_server_cert
from homing.errors import CeremonyError, ConfigError
from homing.fsutil import atomic_write, safe_name
from homing.pki.profiles import split_hosts
from homing.site import DataDir, shared
from homing.site.custody import is_offline_key

__all__ = [
    "KeyTransfer",
    "export_online_keys",
    "import_online_keys",
    "join_replica",
    "missing_online_keys",
]

# Each host makes its own TLS key; it never travels.
OWN_KEYS = ("server-tls",)


def _online_key_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.glob("*.key.pem") if p.name.removesuffix(".key.pem") not in OWN_KEYS
    )


def _copy_keys(files: list[Path], to: Path) -> list[str]:
    """Copy key files into ``to``; an identical file is left, a different one refused."""
    for path in files:
        there = to / path.name
        if there.exists() and there.read_bytes() != path.read_bytes():
            raise CeremonyError(f"{there} exists and differs: refusing to overwrite a key")
    copied = []
    for path in files:
        if not (to / path.name).exists():
            atomic_write(to / path.name, path.read_bytes(), 0o600)
            copied.append(path.name.removesuffix(".key.pem"))
    return copied


@dataclass(frozen=True)
class KeyTransfer:
    """What an export or import of online keys did: keys copied, and keys removed because
    the site destroyed them (keys of generations a rotation retired)."""

    copied: list[str]
    removed: list[str]


def export_online_keys(data: Path | DataDir, to: Path) -> KeyTransfer:
    """Copy the online keys' files (as encrypted as they are) to ``to``.

    Run again after a rotation made new online keys: the keys already in
    ``to`` are left as they are, so the medium carries what replicas lack,
    and a retired key this host has destroyed since is removed from it, so
    no replica takes it back.
    """
    dd, settings, _ = _open(data)
    files = [
        p
        for p in _online_key_files(dd.file_keystore(settings).directory)
        if not is_offline_key(p.name.removesuffix(".key.pem"))
    ]
    if not files:
        raise CeremonyError(f"{dd.keys_dir} holds no online key to export")
    to.mkdir(parents=True, exist_ok=True, mode=0o700)
    copied = _copy_keys(files, to)
    store = dd.keystore(settings)
    removed = []
    for path in _online_key_files(to):
        name = path.name.removesuffix(".key.pem")
        if is_generation_key(name) and not store.exists(name):
            path.unlink()
            removed.append(name)
    return KeyTransfer(copied, removed)


def _refuse_offline(keys: Path) -> None:
    if not keys.is_dir():
        raise ConfigError(f"{keys} is not a directory of exported online keys")
    offline = [p.name for p in keys.glob("*.key.pem") if is_offline_key(p.name[: -len(".key.pem")])]
    if offline:
        raise ConfigError(
            f"{keys} holds offline keys ({', '.join(sorted(offline))}): a replica holds online "
            "keys only; export them with `homing keystore export-online`"
        )


def import_online_keys(data: Path | DataDir, keys: Path) -> KeyTransfer:
    """A replica takes the online keys it lacks from ``keys``, then destroys its keys of
    generations the site's rotations retired (as the site's own host did)."""
    dd, settings, _ = _open(data)
    _refuse_offline(keys)
    directory = dd.file_keystore(settings).directory
    directory.mkdir(mode=0o700, exist_ok=True)
    copied = _copy_keys(_online_key_files(keys), directory)
    removed = destroy_retired_keys(dd, settings, dd.keystore(settings))
    return KeyTransfer([n for n in copied if n not in removed], removed)


def missing_online_keys(dd: DataDir) -> list[str]:
    """The online keys the site's settings name that this host's key store lacks.

    A rotation on another host makes new keys there (the issuing CAs' next
    backups, the next online keys); a replica that lacks one cannot follow
    the rotation until it is imported (``homing replica import-keys``).
    """
    settings = dd.settings()
    store = dd.keystore(settings)
    names = [
        f"device-ca-g{settings.device_ca_generation}",
        f"device-ca-g{settings.device_ca_generation + 1}",
        f"server-ca-g{settings.server_ca_generation}",
        f"server-ca-g{settings.server_ca_generation + 1}",
        f"timestamp-{settings.online_key_generation}",
        f"snapshot-{settings.online_key_generation}",
    ]
    return [n for n in names if not store.exists(n)]


def _check_names(hosts: list[str], site_hosts: list[str]) -> None:
    """RFC 5280 §4.2.1.10: the server CA permits only the site's names and their subdomains."""
    site_dns, site_ips = split_hosts(site_hosts)
    dns, ips = split_hosts(hosts)
    for name in dns:
        if not any(name == d or name.endswith("." + d) for d in site_dns):
            raise ConfigError(
                f"replica name {name!r} is outside the site's names ({', '.join(site_hosts)}): "
                "the server CA would not permit it; use a subdomain of one of them"
            )
    allowed = {ipaddress.ip_address(i) for i in site_ips}
    for ip in ips:
        if ipaddress.ip_address(ip) not in allowed:
            raise ConfigError(
                f"replica address {ip} is not one of the site's addresses: the server CA "
                "would not permit it; give it a DNS name under the site's"
            )


def join_replica(
    root: Path,
    db_url: str,
    keys: Path,
    name: str,
    hosts: list[str],
    now: datetime,
    *,
    passphrase: bytes | None = None,
) -> DataDir:
    """Make ``root`` a replica of the site published in ``db_url``; returns its data directory."""
    safe_name(name, "replica name")
    dd = DataDir(root, db_url, passphrase=passphrase)
    if dd.exists():
        raise ConfigError(f"{root} already holds a data directory: join into a new one")
    _refuse_offline(keys)
    try:
        db = dd.database()
        if not shared.is_shared(db):
            raise ConfigError(
                "the database holds no published site: start the first host's `homing serve` "
                "on it, or run `homing site publish` there"
            )
        root.mkdir(parents=True, exist_ok=True)
        shared.pull(dd, db)
        settings = dd.settings()
        _check_names(hosts, settings.hosts)
        import_online_keys(dd, keys)
        atomic_write(dd.replica_path(), json.dumps({"name": name, "hosts": hosts}).encode())
        rotate_server_cert(dd, now, actor=f"replica:{name}")
    except BaseException:
        dd.close()
        raise
    return dd
