"""When an autoencoder's training stops, which weights it keeps, and its learning rate.

Pure Python (no PyTorch), told the held-out loss after every epoch by
:mod:`cubepipe.pipeline.compression.autoencoder.torch_backend`:

- **Kept weights**: those of the epoch with the lowest held-out loss, the start (epoch 0,
  before any step) included. With the PCA start the stored model is therefore never
  worse than PCA on the held-out pixels; when no epoch beats the start, the start is what
  is stored, and the report says so.
- **Stopping**: after ``patience`` epochs in a row without a gain of more than
  ``threshold`` (relative) on the best held-out loss *of the trained epochs*. The start
  does not count here: the first epochs are often worse than a PCA start (Adam's first
  steps move every weight by about the learning rate, and the PCA start is a minimum of
  the linear path), and that must not stop a training whose loss is still falling. Only
  a plateau of the trained network stops it. Training also stops at the epoch cap, and
  when the held-out loss is not finite (divergence).
- **Learning rate** (reduce-on-plateau): Adam's rate is halved after ``lr_patience``
  epochs without a gain (default ``patience // 3``), and again every ``lr_patience``
  epochs while the plateau lasts, down to ``learning_rate * min_factor``.

The outcome is a code, ``stop_reason`` (``patience``, ``epoch_cap``, ``diverged`` or
``not_trained``), and a sentence, ``stopped``, e.g. ``"no held-out gain over 0.01% for 10
epochs (best epoch 37)"`` or ``"epoch cap 50 reached while still improving (best epoch
50) - raise --epochs"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Schedule"]


@dataclass
class Schedule:
    """Early stopping, the kept epoch and the learning rate of one training run.

    Set the optimizer's rate to :attr:`learning_rate_now` before each epoch and call
    :meth:`end_epoch` after it; :meth:`report` gives the JSON-ready outcome.
    """

    epochs: int
    patience: int
    learning_rate: float
    start_loss: float
    start_name: str = "PCA start"
    lr_patience: int = 0  # 0: max(1, patience // 3)
    factor: float = 0.5
    min_factor: float = 1.0 / 64
    threshold: float = 1e-4
    best_loss: float = field(init=False)
    best_epoch: int = field(init=False, default=0)
    epochs_run: int = field(init=False, default=0)
    history: list[float] = field(init=False, default_factory=list)
    _trained_best: float = field(init=False, default=math.inf)
    _gain_epoch: int = field(init=False, default=0)
    _stale: int = field(init=False, default=0)
    _since_cut: int = field(init=False, default=0)
    _scale: float = field(init=False, default=1.0)
    _reason: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.patience < 1:
            raise ValueError(
                f"need epochs >= 0 and patience >= 1; got {self.epochs}, {self.patience}"
            )
        self.best_loss = self.start_loss
        if self.lr_patience <= 0:
            self.lr_patience = max(1, self.patience // 3)
        if self.epochs == 0:
            self._reason = "not_trained"

    @property
    def learning_rate_now(self) -> float:
        """The learning rate with the plateau cuts so far."""
        return self.learning_rate * self._scale

    @property
    def beat_start(self) -> bool:
        """Whether a trained epoch has a lower held-out loss than the start."""
        return self.best_epoch > 0

    def end_epoch(self, epoch: int, loss: float) -> tuple[bool, bool]:
        """Record ``epoch``'s (1-based) held-out ``loss``; returns ``(best, stop)``: whether
        its weights are the best so far (keep them) and whether training stops now."""
        self.epochs_run = epoch
        self.history.append(float(loss))
        if not math.isfinite(loss):
            self._reason = "diverged"
            return False, True
        best = loss < self.best_loss
        if best:
            self.best_loss, self.best_epoch = loss, epoch
        if epoch == 1 or loss < self._trained_best - self.threshold * abs(self._trained_best):
            self._trained_best, self._gain_epoch = loss, epoch
            self._stale = self._since_cut = 0
        else:
            self._stale += 1
            self._since_cut += 1
            if self._since_cut >= self.lr_patience and self._scale > self.min_factor:
                self._scale = max(self._scale * self.factor, self.min_factor)
                self._since_cut = 0
        if self._stale >= self.patience:
            self._reason = "patience"
        elif epoch >= self.epochs:
            self._reason = "epoch_cap"
        return best, bool(self._reason)

    def sentence(self) -> str:
        """Why training stopped and what was kept, in words."""
        best = f"best epoch {self.best_epoch}"
        if self._reason == "not_trained":
            return f"not trained (--epochs 0): the stored model is the {self.start_name}"
        if self._reason == "diverged":
            text = (
                f"diverged: held-out loss not finite at epoch {self.epochs_run} ({best}) - "
                "lower --learning-rate"
            )
        elif self._reason == "patience":
            text = f"no held-out gain over {self.threshold:.2%} for {self.patience} epochs ({best})"
        elif self._stale == 0:
            text = (
                f"epoch cap {self.epochs} reached while still improving ({best}) - raise --epochs"
            )
        else:
            text = (
                f"epoch cap {self.epochs} reached before --patience {self.patience} ran out "
                f"(last gain over {self.threshold:.2%} at epoch {self._gain_epoch}, {best}) - "
                "raise --epochs to be sure"
            )
        if not self.beat_start:
            text += (
                f"; no epoch beat the {self.start_name} on held-out pixels, so the stored "
                f"model is the {self.start_name}"
            )
        return text

    def report(self) -> dict[str, Any]:
        """The JSON-ready outcome: ``stop_reason``, ``stopped`` (the sentence),
        ``beat_start``, ``epochs_run``, ``best_epoch``, ``patience``, ``lr_schedule``,
        ``learning_rate_final`` and ``heldout_history`` (the held-out loss per epoch)."""
        return {
            "stop_reason": self._reason or "epoch_cap",
            "stopped": self.sentence(),
            "beat_start": self.beat_start,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "patience": self.patience,
            "lr_schedule": (
                f"Adam, reduce-on-plateau: x{self.factor:g} after {self.lr_patience} epochs "
                f"without a held-out gain over {self.threshold:.2%}, down to "
                f"x{self.min_factor:g}"
            ),
            "learning_rate_final": self.learning_rate_now,
            "heldout_history": [float(f"{v:.6g}") for v in self.history],
        }
