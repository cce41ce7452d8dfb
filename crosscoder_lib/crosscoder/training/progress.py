"""What a run records as it goes: the metrics list, the progress bar, Weights & Biases.

None of it changes the arithmetic (the FVU of a logged step is computed without gradients), so it
is all :class:`~crosscoder_lib.crosscoder.training.config.RunOptions`.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from crosscoder_lib.crosscoder.training.config import RunOptions, TrainConfig
from crosscoder_lib.crosscoder.training.loss import LossTerms

BAR_KEYS = ("loss", "fvu", "l0", "dead_fraction", "dominant_share", "penalty")


def _wandb_run(options: RunOptions, config: dict):
    try:
        import wandb
    except ImportError as err:
        raise ImportError("RunOptions.wandb=True needs the wandb package (pip install wandb)") from err
    return wandb.init(project=options.wandb_project, name=options.wandb_run_name, config=config)


def step_metrics(step: int, s: LossTerms, cfg: TrainConfig, dead_fraction: float) -> dict:
    """The record of a logged step (``step``: steps done, so the step just taken is ``step - 1``)."""
    m = {"step": step, "loss": float(s.loss.detach()), "mse": float(s.mse.detach()), "fvu": float(s.fvu),
         "l0": float(s.l0), "aux": float(s.aux.detach()), "dead_fraction": dead_fraction,
         "lr": cfg.lr_at(step - 1)}
    if s.penalty is not None:
        m["penalty"], m["dominant_share"] = float(s.penalty.detach()), float(s.dominant_share)
        m["lambda"] = cfg.lambda_at(step - 1)
    return m


class Progress:
    """The metrics of a run (``metrics``, resumed from a checkpoint) and, on the main process, its
    progress bar and W&B run."""

    def __init__(self, cfg: TrainConfig, options: RunOptions, metrics: list[dict], start: int, *,
                 show: bool, wandb_config: dict):
        self.cfg, self.options, self.metrics = cfg, options, metrics
        self.bar = tqdm(total=cfg.n_steps, initial=start, desc="crosscoder", dynamic_ncols=True) \
            if options.progress and show else None
        self.run = _wandb_run(options, wandb_config) if options.wandb and show else None

    def logs(self, step: int) -> bool:
        """Whether (0-based) ``step`` is recorded (and so computes its FVU)."""
        return (step + 1) % self.options.log_every == 0 or step + 1 == self.cfg.n_steps

    def record(self, step: int, s: LossTerms, dead_fraction: float) -> None:
        """After ``step`` steps: append the metrics if this step logs, move the bar."""
        if self.logs(step - 1):
            m = step_metrics(step, s, self.cfg, dead_fraction)
            self.metrics.append(m)
            if self.bar is not None:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in m.items() if k in BAR_KEYS})
            if self.run is not None:
                self.run.log(m, step=step)
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.run is not None:
            self.run.finish()
