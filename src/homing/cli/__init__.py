"""The operator CLI, by audience: parses arguments and calls the library; nothing else.

Every ``HomingError`` becomes one line on stderr and exit status 1; usage
errors are one line too and exit 2. No traceback reaches the operator.
Commands open no transaction and write no audit line themselves: the
ceremonies and ``homing.operations`` do.

- ``trust``: init, rotations, timestamp/targets, pins, recovery bundles
- ``pki``: issue, revoke, CRLs
- ``serving``: serve, the home server
- ``operators``: tokens, factory stations, revoke, status, devices
- ``factories``: a station's manifest, quota and expiry; blocked ids
- ``fleet``: provisioning, device groups, releases, rollouts
- ``agent``: the device's commands
- ``simulation``: demo and simulate
- ``acme``: a public-CA server certificate
- ``ceremony``: sign-then-combine threshold ceremonies
- ``replicas``: the shared site, replicas, backup and restore
- ``clock``: the home's own clock, guarded
- ``brokers``: MQTT brokers devices reach with homing's trust
"""

from homing.cli import (
    acme,
    agent,
    brokers,
    ceremony,
    clock,
    factories,
    fleet,
    operators,
    pki,
    replicas,
    serving,
    simulation,
    trust,
)
from homing.cli._base import cli, main

__all__ = [
    "acme",
    "agent",
    "brokers",
    "ceremony",
    "cli",
    "clock",
    "factories",
    "fleet",
    "main",
    "operators",
    "pki",
    "replicas",
    "serving",
    "simulation",
    "trust",
]
