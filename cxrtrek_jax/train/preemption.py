"""Fault handling for the training loop: pre-emption (SIGTERM) and non-finite losses.

Pre-emption: `PreemptionWatcher` turns SIGTERM into a flag that the loop polls once per step
(`should_stop(step)`); the loop then saves a checkpoint at the current step and exits 0. In a
multi-process job JAX's coordination service already catches SIGTERM on every host, so the
watcher asks it instead (`multihost_utils.reached_preemption_sync_point`), which makes all
processes stop at the same step.

Non-finite values: the train step skips any update whose loss or gradient norm is NaN/Inf and
flags it; `check_finite` turns the flag into `NonFiniteError` naming the step, and the loop
stops without saving, so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["PreemptionWatcher", "NonFiniteError", "check_finite"]

log = logging.getLogger(__name__)


class PreemptionWatcher:
    """Records SIGTERM (or the given signals) between `install()` and `uninstall()`; also a
    context manager. Single-process only handlers are installed; see the module docstring."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._signals = signals
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "PreemptionWatcher":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def install(self) -> None:
        if jax.process_count() > 1:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: SIGTERM will not trigger a pre-emption checkpoint")
            return
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        del frame
        log.warning("received %s: will checkpoint and stop", signal.Signals(signum).name)
        self._event.set()

    def request_stop(self) -> None:
        """Ask the loop to stop as if pre-empted."""
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and stop before running `step + 1`. Every process must call this
        at every step in a multi-process job (it synchronises them)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return self._event.is_set() or multihost_utils.reached_preemption_sync_point(step)
        return self._event.is_set()


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN/Inf at `step`."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        self.step, self.loss, self.grad_norm = step, loss, grad_norm
        super().__init__(
            f"non-finite values at step {step}: loss={loss}, grad_norm={grad_norm}; the update was "
            "not applied and training stopped (the newest checkpoint is the last good one)"
        )


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
    """Raise NonFiniteError when `metrics` (of the step that produced optimizer step `step`) has
    `finite` False. Fetches three scalars from the device."""
    finite, loss, grad_norm = jax.device_get(
        (metrics["finite"], metrics["loss"], metrics["grad_norm"])
    )
    if not bool(np.asarray(finite)):
        raise NonFiniteError(step, float(loss), float(grad_norm))
