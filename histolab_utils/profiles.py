"""Which run profile is active: ``HISTO_PROFILE`` = ``smoke`` (the default: a 2-core CPU, used by
CI) or ``full`` (one GPU). Kept apart from ``config`` so that ``report`` can read it without
importing ``config`` (which imports ``report``)."""

from __future__ import annotations

import os

PROFILE_ENV = "HISTO_PROFILE"
PROFILES = ("smoke", "full")


def current_profile() -> str:
    """The profile named by ``HISTO_PROFILE`` (``smoke`` when unset)."""
    name = os.environ.get(PROFILE_ENV, "smoke").strip().lower() or "smoke"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={os.environ[PROFILE_ENV]!r} is not a profile; use one of {PROFILES}")
    return name
