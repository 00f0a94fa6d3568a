"""How a training loop is steered and what it reports: the pause/resume/stop flags, what each
step does besides training (:class:`StepPlan`), the step record."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import TrainConfig


@dataclass(frozen=True)
class StepPlan:
    """What the loop does once optimisation step ``step`` (counted from 1) is done."""

    last: bool  # the run's final step (train.max_steps)
    evaluate: bool  # validation loss: every train.eval_interval steps and at the last step
    sample: bool  # a generated sample, with each evaluation unless train.sample_tokens is 0
    checkpoint: bool  # every train.checkpoint_interval steps (0: with each evaluation) and at the last
    log: bool  # a report (StepMetrics): every train.log_interval steps and with each evaluation

    @classmethod
    def at(cls, step: int, cfg: TrainConfig) -> StepPlan:
        last = step >= cfg.max_steps
        evaluate = step % cfg.eval_interval == 0 or last
        checkpoint = last or (step % cfg.checkpoint_interval == 0 if cfg.checkpoint_interval else evaluate)
        log = evaluate or step % cfg.log_interval == 0
        return cls(last=last, evaluate=evaluate, sample=evaluate and cfg.sample_tokens > 0,
                   checkpoint=checkpoint, log=log)

    @property
    def syncs(self) -> bool:
        """Whether the step waits for the device: its losses are read to report or to check them
        before a checkpoint; the other steps queue their work and go on at once."""
        return self.log or self.checkpoint


@dataclass
class StepMetrics:
    """What the loop reports at a logged step (also one line of ``metrics.jsonl``)."""

    step: int  # optimisation steps completed
    max_steps: int
    elapsed_s: float  # training time so far, pauses excluded, across resumes
    train_loss: float  # this step's loss (mean over its micro-batches, and over ranks under torchrun)
    lr: float  # the AdamW learning rate used for this step
    tokens_per_s: float  # training throughput since the previous report (evaluation excluded)
    tokens_seen: int
    val_loss: float | None = None  # on evaluation steps
    # val_loss in bits per UTF-8 byte of the validated text (val_loss × tokens / bytes / ln 2): one
    # unit for every tokenizer. Absent from runs written before it existed.
    val_bpb: float | None = None
    sample: str | None = None  # generated text, on evaluation steps
    grad_norm: float | None = None  # before clipping, when train.grad_clip > 0
    warning: str | None = None  # e.g. torch.compile failed and training went on without it
    kl_to_truth: float | None = None  # mean KL(true ‖ model) over the watched prompts (a synthetic corpus)

    def to_record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class TrainingControl:
    """Pause/resume/stop flags, safe to set from any thread; the loop reads them between steps."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # wake a paused loop so it can see the stop

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_while_paused(self) -> bool:
        """Block while paused; False if training should stop."""
        self._running.wait()
        return not self._stop.is_set()
