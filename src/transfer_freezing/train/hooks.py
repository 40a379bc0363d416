"""Calls at two fixed points of ``core.fit``'s epoch loop, for tests and benchmarks to inject into.

``Hooks`` does nothing: production runs use it. ``Faults`` is the fault injection the tests drive:
a real (non-user) error at the start of an epoch, or SIGKILL right after an epoch's resumable state
was written. A test in the same process passes ``Faults(...)`` to ``fit``; one that runs ``tfreeze``
(or a Ray worker, a sweep) in a subprocess sets ``TFREEZE_FAIL_IN_EPOCH`` / ``TFREEZE_KILL_AFTER_EPOCH``
(0-based epochs), which ``fit`` reads (``Faults.from_env``) when no hooks are given.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from .checkpoint import TrainState

FAIL_ENV = "TFREEZE_FAIL_IN_EPOCH"
KILL_ENV = "TFREEZE_KILL_AFTER_EPOCH"


class Hooks:
    """What ``fit`` calls around each epoch; both calls do nothing here."""

    def epoch_start(self, epoch: int) -> None:
        """Before epoch ``epoch`` (0-based) trains."""

    def epoch_end(self, epoch: int, state: TrainState) -> None:
        """After epoch ``epoch``: metrics recorded and logged, the resumable state written if it was
        due (``checkpoint.Interval``)."""


@dataclass
class Faults(Hooks):
    """Fail at the start of epoch ``fail_in_epoch``; SIGKILL this process after epoch
    ``kill_after_epoch`` (after its resumable state, when one was due)."""

    fail_in_epoch: int | None = None
    kill_after_epoch: int | None = None

    @classmethod
    def from_env(cls) -> Faults:
        """The faults ``TFREEZE_FAIL_IN_EPOCH`` and ``TFREEZE_KILL_AFTER_EPOCH`` ask for (none unset)."""
        return cls(_epoch(FAIL_ENV), _epoch(KILL_ENV))

    def epoch_start(self, epoch: int) -> None:
        if epoch == self.fail_in_epoch:
            raise RuntimeError(f"injected failure in epoch {epoch + 1} ({FAIL_ENV})")

    def epoch_end(self, epoch: int, state: TrainState) -> None:
        if epoch == self.kill_after_epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def _epoch(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value is not None and value.lstrip("-").isdigit() else None
