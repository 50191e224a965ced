"""The public API for the device's own applications (docs/device-apps.md).

``from homing.apps import Home``: pinned mutual TLS to home through the
agent's current trust. The implementation lives with the agent
(``homing.agent.apps``); this name is the one applications import.
"""

from homing.agent.apps import Answer, Home, PinnedContext

__all__ = ["Answer", "Home", "PinnedContext"]
