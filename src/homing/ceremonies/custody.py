"""Taking the offline keys off the server: ``homing keystore move-offline``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from homing.ceremonies._common import OPERATOR, _audit, _open
from homing.errors import CeremonyError
from homing.pki.keystore import FileKeyStore
from homing.site import DataDir
from homing.site.custody import offline_keys_in

__all__ = ["move_offline"]


def move_offline(
    data: Path | DataDir,
    now: datetime,
    media: Path,
    holder_passphrase: bytes,
    *,
    actor: str = OPERATOR,
) -> list[str]:
    """Move every offline key to ``media`` under the holder's passphrase; returns their names.

    Each key is written to the media and read back before it is deleted from
    the server, so a failure leaves it in one place at least.
    """
    dd, settings, _ = _open(data)
    if len(holder_passphrase) < 8:
        raise CeremonyError("a key holder's passphrase must be at least 8 characters")
    if dd.passphrase is not None and holder_passphrase == dd.passphrase:
        raise CeremonyError("a key holder's passphrase must not be the server's")
    if dd.root.resolve() in [media.resolve(), *media.resolve().parents]:
        raise CeremonyError(f"{media} is inside the data directory: use removable media")
    files = dd.file_keystore(settings)
    names = offline_keys_in(files)
    if not names and settings.offline_custody:
        raise CeremonyError("the offline keys have already left this server")
    media.mkdir(parents=True, exist_ok=True)
    target = FileKeyStore(media, holder_passphrase)
    for name in names:
        if target.exists(name):
            raise CeremonyError(f"{target.path(name)} exists: refusing to overwrite a key")
    for name in names:
        key = files.load(name)
        target.store(name, key)
        if target.load(name).public_key() != key.public_key():
            raise CeremonyError(f"key {name!r} did not read back from {media}")
    for name in names:
        files.remove(name)
    settings.offline_custody = True
    dd.save_settings(settings)
    _audit(dd, now, actor, "move_offline", str(media), {"keys": names})
    return names
