"""The transformers releases this toolkit is tested against, and the one warning a newer release gets.

The toolkit reads models through transformers' internals (attention functions, mask builders, hidden-state
layouts), which a release can change. The lower end is pyproject.toml's lower bound; the upper end is the newest
release ``make test-compat`` passed on. A newer transformers is allowed (pyproject.toml admits the major version)
but warned about once per process, at the first capture, pointing at ``lagrangian-lens doctor``.
"""
from __future__ import annotations

import logging

import transformers
from packaging.version import Version

TESTED_TRANSFORMERS = ("5.23.0", "5.25.0")  # (oldest, newest) transformers the conformance suite passed on
_log = logging.getLogger("lagrangian_lens")
_warned = False


def untested_transformers(version: str | None = None) -> str | None:
    """The one-line warning for a transformers ``version`` (default: the installed one) newer than the tested
    range; None within it."""
    version = version or transformers.__version__
    lo, hi = TESTED_TRANSFORMERS
    if Version(version).release <= Version(hi).release:  # a dev or rc build of a tested release counts as tested
        return None
    return (f"transformers {version} is newer than the tested range {lo}–{hi}; run `lagrangian-lens doctor` to "
            "check your model")


def warn_if_untested() -> None:
    """Log :func:`untested_transformers` once per process (at the first capture); a no-op within the range."""
    global _warned
    if not _warned:
        _warned = True
        if (message := untested_transformers()) is not None:
            _log.warning(message)
