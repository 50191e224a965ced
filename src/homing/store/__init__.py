"""Storage for the home server: SQLAlchemy Core over SQLite or PostgreSQL."""

from homing.store.db import Database, normalize_url

__all__ = ["Database", "normalize_url"]
