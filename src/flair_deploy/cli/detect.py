"""`flair-deploy detect` (being built; see the issue tracker)."""

from __future__ import annotations

from flair_deploy.errors import FlairDeployError


def command() -> None:
    """Not available yet."""
    raise FlairDeployError("'detect' is not available yet in this build")
