"""The operator's data directory: settings, keys, PKI files and the repository.

Layout::

    DIR/homing.json          settings (this module's Settings)
    DIR/keys/                key store (online keys; in a development
                             repository every key, unencrypted)
    DIR/pki/                 CA certificates, the server chain and CRLs
    DIR/homing.db            the embedded database (devices, the issuance
                             record, credentials, audit); or --db / $HOMING_DB
    DIR/repository/          TUF metadata/ and targets/, servable as static files

In ceremony mode the TUF root keys are not in DIR at all: each lives in its
own file on removable media, and ceremonies are given their paths.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from homing.config import Expiries, Validity
from homing.errors import ConfigError
from homing.fsutil import atomic_write
from homing.pki.keystore import FileKeyStore, KeyStore
from homing.pki.validate import load_certificates_pem
from homing.site.ledger import DatabaseLedger
from homing.store import Database, normalize_url
from homing.trust.repository import TrustRepository

__all__ = ["DISTRUSTED_DEVICE_CAS", "DataDir", "Settings"]

SCHEMA = "homing.data/1"

# Under pki/: the device CAs whose key was stolen (``rotate device-ca --compromised``).
DISTRUSTED_DEVICE_CAS = "distrusted-device-cas.pem"


@dataclass
class Settings:
    """Everything a ceremony needs to know that is not a key or a certificate."""

    mode: str
    encrypted: bool
    organization: str
    hosts: list[str]
    primary: str
    mirrors: list[str]
    root_keys: list[str]
    root_threshold: int
    server_ca_generation: int = 1
    device_ca_generation: int = 1
    # The X.509 root CA: generation 1's key is "root-ca", later ones "root-ca-gN".
    root_ca_generation: int = 1
    online_key_generation: int = 1
    # The firmware release key: generation 1's is "firmware", later ones "firmware-gN".
    firmware_key_generation: int = 1
    expiry_days: dict[str, float] = field(
        default_factory=lambda: {
            k: v.total_seconds() / 86400 for k, v in asdict(Expiries()).items()
        }
    )
    server_validity_days: float = Validity().server.total_seconds() / 86400
    device_validity_days: float = Validity().device.total_seconds() / 86400
    # Which server certificates devices accept (the pin policy): "private"
    # (the site's server CA), "public" (an ACME CA's chain, pinned by key) or
    # "mixed" (either, during a migration); and which one the server serves.
    server_tls_mode: str = "private"
    serving: str = "private"
    # ACME: directory, identifiers, email, directory_ca, http_host, http_port,
    # account_uri, key_generation (homing.ceremonies.acme).
    acme: dict[str, Any] | None = None
    # A PKCS#11 token for some keys: {"module", "token", "keys": [name patterns]}.
    pkcs11: dict[str, Any] | None = None
    # True once the offline keys (homing.site.custody) left the server's store.
    offline_custody: bool = False
    # True once a root handed the targets role to key holders (homing ceremony).
    targets_by_holders: bool = False
    # Every release takes a sequence number above this. A restore raises it:
    # devices may run releases made after the backup, which it does not know,
    # and refuse any sequence not above theirs (homing.ceremonies.restoration).
    release_sequence_floor: int = 0
    # MQTT brokers (mqtts://host:port) published with the pins (homing.trust.services).
    mqtt_brokers: list[str] = field(default_factory=list)

    @property
    def expiries(self) -> Expiries:
        try:
            return Expiries(**{k: timedelta(days=v) for k, v in self.expiry_days.items()})
        except TypeError as e:
            raise ConfigError(f"unknown expiry in settings: {e}") from e

    @property
    def validity(self) -> Validity:
        return Validity(
            server=timedelta(days=self.server_validity_days),
            device=timedelta(days=self.device_validity_days),
        )

    def to_json(self) -> bytes:
        return json.dumps({"schema": SCHEMA, **asdict(self)}, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Settings:
        try:
            doc: dict[str, Any] = json.loads(data)
        except ValueError as e:
            raise ConfigError(f"{where} is not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.pop("schema", None) != SCHEMA:
            raise ConfigError(f"{where} is not a homing settings file ({SCHEMA})")
        try:
            settings = cls(**doc)
        except TypeError as e:
            raise ConfigError(f"{where} has unknown or missing settings: {e}") from e
        if settings.mode not in ("dev", "ceremony"):
            raise ConfigError(f"{where}: mode must be 'dev' or 'ceremony'")
        if settings.server_tls_mode not in ("private", "mixed", "public"):
            raise ConfigError(f"{where}: server_tls_mode must be private, mixed or public")
        if settings.serving not in ("private", "acme"):
            raise ConfigError(f"{where}: serving must be 'private' or 'acme'")
        return settings


class DataDir:
    """Paths and loaders for one data directory.

    ``db_url`` and ``passphrase`` (of the key store) are given by the caller:
    the CLI and the server read them from flags, the environment or a
    terminal at their edge; nothing below reads the environment.
    """

    def __init__(
        self,
        root: Path,
        db_url: str | None = None,
        *,
        passphrase: bytes | None = None,
        pkcs11_pin: str | None = None,
        offline_media: Path | None = None,
        holder_passphrase: bytes | None = None,
    ) -> None:
        self.root = root
        self.db_url = db_url
        self.passphrase = passphrase
        self.pkcs11_pin = pkcs11_pin
        # The mounted media with the offline keys, for a ceremony (never on the server).
        self.offline_media = offline_media
        self.holder_passphrase = holder_passphrase
        self.settings_path = root / "homing.json"
        self.keys_dir = root / "keys"
        self.pki_dir = root / "pki"
        self.repository_dir = root / "repository"
        self.metadata_dir = self.repository_dir / "metadata"
        self._db: Database | None = None

    def exists(self) -> bool:
        return self.settings_path.exists()

    def settings(self) -> Settings:
        try:
            data = self.settings_path.read_bytes()
        except FileNotFoundError as e:
            raise ConfigError(
                f"no homing data directory at {self.root}: run 'homing init --data {self.root}'"
            ) from e
        return Settings.from_json(data, str(self.settings_path))

    def save_settings(self, settings: Settings) -> None:
        atomic_write(self.settings_path, settings.to_json())

    def replica_path(self) -> Path:
        return self.root / "replica.json"

    def server_hosts(self, settings: Settings) -> list[str]:
        """The names in this host's TLS certificate: its own (replica.json), else the site's.

        Each replica of a shared site has its own certificate for its own
        names plus the site's (devices reach it through the load balancer).
        """
        try:
            doc = json.loads(self.replica_path().read_bytes())
        except FileNotFoundError:
            return settings.hosts
        except ValueError as e:
            raise ConfigError(f"{self.replica_path()} is not JSON: {e}") from e
        hosts = doc.get("hosts") if isinstance(doc, dict) else None
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise ConfigError(f"{self.replica_path()} must hold a list of host names")
        return list(dict.fromkeys([*hosts, *settings.hosts]))

    def keystore(self, settings: Settings) -> KeyStore:
        """The site's keys: files, a PKCS#11 token for the names its settings route there,
        and, once they are kept offline, the offline keys from mounted media only."""
        store: KeyStore = self.file_keystore(settings)
        if settings.pkcs11 is not None:
            from homing.pki.pkcs11_store import LayeredKeyStore, Pkcs11KeyStore, TokenConfig

            if not self.pkcs11_pin:
                raise ConfigError("this site keeps keys on a PKCS#11 token: set HOMING_PKCS11_PIN")
            token = settings.pkcs11
            config = TokenConfig(token["module"], token["token"], self.pkcs11_pin)
            store = LayeredKeyStore(
                self.file_keystore(settings), Pkcs11KeyStore(config), token["keys"]
            )
        if settings.offline_custody:
            from homing.site.custody import OfflineAwareKeyStore

            media = None
            if self.offline_media is not None:
                if not self.holder_passphrase:
                    raise ConfigError(
                        "the offline keys are encrypted with their holder's passphrase: "
                        "set HOMING_HOLDER_PASSPHRASE"
                    )
                media = FileKeyStore(self.offline_media, self.holder_passphrase)
            store = OfflineAwareKeyStore(store, media)
        return store

    def file_keystore(self, settings: Settings) -> FileKeyStore:
        passphrase = self.passphrase
        if settings.encrypted and not passphrase:
            raise ConfigError(
                "the keys of this data directory are encrypted: set HOMING_KEY_PASSPHRASE"
            )
        return FileKeyStore(self.keys_dir, passphrase, unsafe_plaintext=not settings.encrypted)

    def repository(self, settings: Settings) -> TrustRepository:
        return TrustRepository(self.repository_dir, settings.expiries)

    def default_db_url(self) -> str:
        return f"sqlite:///{(self.root / 'homing.db').resolve()}"

    def database(self, url: str | None = None) -> Database:
        """The data directory's database (embedded SQLite unless ``url`` says otherwise)."""
        url = url or self.db_url or self.default_db_url()
        if url == self.default_db_url() and not self.root.is_dir():
            raise ConfigError(
                f"no homing data directory at {self.root}: run 'homing init --data {self.root}'"
                " (or pass --data where it is)"
            )
        if self._db is None or normalize_url(url) != self._db.url:
            self.close()
            self._db = Database(url)
            self._db.migrate()
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def ledger(self, db: Database | None = None) -> DatabaseLedger:
        return DatabaseLedger(db or self.database())

    def pki_path(self, name: str) -> Path:
        return self.pki_dir / name

    def certificate(self, name: str) -> x509.Certificate:
        return self.certificates(name)[0]

    def certificates(self, name: str) -> list[x509.Certificate]:
        path = self.pki_path(name)
        try:
            certs = load_certificates_pem(path.read_bytes())
        except FileNotFoundError as e:
            raise ConfigError(f"missing {path}: the data directory is incomplete") from e
        if not certs:
            raise ConfigError(f"{path} holds no certificate")
        return certs
