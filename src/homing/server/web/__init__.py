"""The web fleet view: server-rendered pages for operators, behind their tokens."""

from homing.server.web.routes import routes

__all__ = ["routes"]
