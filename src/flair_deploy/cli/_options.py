"""Parsers shared by several commands' options."""

from __future__ import annotations

from flair_deploy.errors import ConfigError

__all__ = ["parse_bands"]


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """Parse ``--bands 1,2,3`` into 1-based band numbers (None when the option is not given).

    Raises:
        ConfigError: For anything but a non-empty comma-separated list of integers.
    """
    if text is None:
        return None
    try:
        bands = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(
            f"--bands {text!r} is not a comma-separated list of 1-based band numbers, e.g. 1,2,3,4,5"
        ) from None
    if not bands:
        raise ConfigError("--bands is empty; give 1-based band numbers, e.g. 1,2,3,4,5")
    return bands
