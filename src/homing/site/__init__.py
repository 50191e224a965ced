"""The operator's site: the data directory, its settings and its database-backed ledger.

Below the ceremonies (which change the site) and the server (which serves
it); above the store, the PKI and the trust repository it holds.
"""

from homing.site.datadir import DataDir, Settings
from homing.site.ledger import DatabaseLedger

__all__ = ["DataDir", "DatabaseLedger", "Settings"]
