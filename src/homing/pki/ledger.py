"""The issuance record: every certificate an authority signed, and its status.

The record is what makes serials unique and revocation by device possible.
It sits behind :class:`Ledger` so the home server can keep it in its
database; :class:`FileLedger` is the append-only file an offline or
development authority uses.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

from homing.errors import ConfigError, PKIError

__all__ = ["FileLedger", "IssuedRecord", "Ledger", "MemoryLedger"]


@dataclass(frozen=True)
class IssuedRecord:
    serial: int
    kind: str
    subject_id: str
    issuer_pin: str
    not_after: datetime
    revoked_at: datetime | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["serial"] = format(self.serial, "x")
        out["not_after"] = self.not_after.isoformat()
        out["revoked_at"] = self.revoked_at.isoformat() if self.revoked_at else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> IssuedRecord:
        revoked = data.get("revoked_at")
        return cls(
            serial=int(str(data["serial"]), 16),
            kind=str(data["kind"]),
            subject_id=str(data["subject_id"]),
            issuer_pin=str(data["issuer_pin"]),
            not_after=datetime.fromisoformat(str(data["not_after"])),
            revoked_at=datetime.fromisoformat(str(revoked)) if revoked else None,
            reason=str(data["reason"]) if data.get("reason") else None,
        )


class Ledger(Protocol):
    def contains(self, serial: int) -> bool: ...

    def record(self, entry: IssuedRecord) -> None: ...

    def get(self, serial: int) -> IssuedRecord | None: ...

    def by_subject(self, subject_id: str) -> list[IssuedRecord]: ...

    def revoke(self, serial: int, when: datetime, reason: str) -> IssuedRecord: ...

    def revoked(self, issuer_pin: str) -> list[IssuedRecord]: ...


class MemoryLedger:
    """A ledger held in memory: for tests, the simulator and benchmarks."""

    def __init__(self) -> None:
        self._records: dict[int, IssuedRecord] = {}
        self._by_subject: dict[str, list[int]] = {}

    def contains(self, serial: int) -> bool:
        return serial in self._records

    def get(self, serial: int) -> IssuedRecord | None:
        return self._records.get(serial)

    def record(self, entry: IssuedRecord) -> None:
        if entry.serial in self._records:
            raise PKIError(f"serial {entry.serial:x} was already issued")
        self._commit(entry)

    def _commit(self, entry: IssuedRecord) -> None:
        """Make ``entry`` count; subclasses persist it first."""
        self._apply(entry)

    def _apply(self, entry: IssuedRecord) -> None:
        if entry.serial not in self._records:
            self._by_subject.setdefault(entry.subject_id, []).append(entry.serial)
        self._records[entry.serial] = entry

    def by_subject(self, subject_id: str) -> list[IssuedRecord]:
        return [self._records[s] for s in self._by_subject.get(subject_id, [])]

    def revoke(self, serial: int, when: datetime, reason: str) -> IssuedRecord:
        entry = self._records.get(serial)
        if entry is None:
            raise PKIError(f"no certificate with serial {serial:x} was issued here")
        if entry.revoked_at is not None:
            return entry
        revoked = replace(entry, revoked_at=when, reason=reason)
        self._commit(revoked)
        return revoked

    def revoked(self, issuer_pin: str) -> list[IssuedRecord]:
        return [
            r
            for r in self._records.values()
            if r.revoked_at is not None and r.issuer_pin == issuer_pin
        ]


class FileLedger(MemoryLedger):
    """An append-only JSON-lines file; each event is fsynced before it counts."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        super().__init__()
        self.path = path
        self.durable = durable
        if path.exists():
            self._load()

    def _load(self) -> None:
        good_end = 0
        with self.path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    # A torn last line is a write cut short by a crash: it
                    # never counted, because it was never fsynced whole.
                    break
                if line.strip():
                    try:
                        self._apply(IssuedRecord.from_json(json.loads(line)))
                    except (ValueError, KeyError, TypeError) as e:
                        raise ConfigError(f"issuance record {self.path}:{number} is damaged") from e
                good_end += len(line)
        if good_end != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())

    def _commit(self, entry: IssuedRecord) -> None:
        line = json.dumps(entry.to_json(), separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.write(line.encode())
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        self._apply(entry)
