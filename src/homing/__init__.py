"""homing: devices that always find their way home.

A private PKI, a signed and versioned trust repository (TUF metadata carrying
the TLS pins and the home server endpoints), and the code a device runs to
walk from the trust it left the factory with to today's keys.
"""

__version__ = "0.1.0"
