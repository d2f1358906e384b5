"""`flair-deploy demo` (being built; see the issue tracker)."""

from __future__ import annotations

from flair_deploy.errors import FlairDeployError


def command() -> None:
    """Not available yet."""
    raise FlairDeployError("'demo' is not available yet in this build")
