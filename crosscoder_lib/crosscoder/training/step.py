"""One training step: loss, backward, clipping, Adam, the firing tracker, BatchTopK's threshold.

A step has two phases, and only the second changes any state:

1. **compute**: check the batch is finite, form the loss (:mod:`.loss`), check it is finite,
   backward, average gradients over ranks, clip, check the gradient norm is finite;
2. **commit**: ``optimizer.step()``, the firing tracker, :meth:`Activation.commit_step` (BatchTopK's
   staged threshold update).

So a step that fails in phase 1 (a non-finite batch, loss or gradient; a bad batch; any exception)
leaves the crosscoder, Adam and the tracker exactly as the previous step left them: the state of a
completed step, which the loop may save. :attr:`TrainingStep.committing` says when a failure lands
inside phase 2, whose state is then not saved. Nothing random happens in a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crosscoder_lib.crosscoder.activations import FiringTracker
from crosscoder_lib.crosscoder.distributed import SingleProcess
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.training.config import TrainConfig
from crosscoder_lib.crosscoder.training.loss import LossTerms, Objective, compute_loss, interaction_term


class NonFiniteError(FloatingPointError):
    """Training met NaN/inf (in the activations, the loss or the gradient); the message says where
    and when, and nothing of that step was applied."""


def make_optimizer(crosscoder: Crosscoder, cfg: TrainConfig) -> torch.optim.Adam:
    params = [p for p in crosscoder.parameters() if p.requires_grad]
    # The fused kernel is ~5x faster than the default on CPU at the paper's size (the update of
    # 2 x 20M parameters otherwise costs as much as the matrix products); same update rule.
    try:
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas)


def nonfinite_slots(acts_BXD: torch.Tensor, parallel: SingleProcess) -> list[int]:
    """Hookpoint slots holding a NaN or inf anywhere in the global batch."""
    # A sum is non-finite iff some element is (inf - inf gives nan), at the cost of one reduction;
    # summed over ranks so that every rank stops at the same step.
    per_slot = parallel.sum_over_ranks(acts_BXD.sum(dim=(0, 2)))
    return torch.nonzero(~torch.isfinite(per_slot)).flatten().tolist()


@dataclass
class TrainingStep:
    """``step_fn(acts_BXD, step, with_fvu=...) -> LossTerms``: one optimiser step on raw activations,
    with everything fixed for a run bundled (module docstring for what it guarantees)."""

    objective: Objective
    optimizer: torch.optim.Optimizer
    tracker: FiringTracker
    cfg: TrainConfig
    committing: bool = False

    @classmethod
    def build(cls, cfg: TrainConfig, crosscoder: Crosscoder | CrosscoderConfig, mlp, device: torch.device,
              parallel: SingleProcess) -> TrainingStep:
        """A fresh step for ``crosscoder`` (a config builds a new model; a model is trained in place)."""
        cc = crosscoder if isinstance(crosscoder, Crosscoder) else Crosscoder(crosscoder)
        cc.to(device).train()
        penalty = None
        if cfg.lambda_int > 0:
            # TrainConfig.g_precision / g_rows once the config carries them; the exact defaults until then.
            penalty = interaction_term(cc, mlp.to(device), cfg.penalty_form,
                                       g_precision=getattr(cfg, "g_precision", "float32"),
                                       g_rows=getattr(cfg, "g_rows", "all"))
        tracker = FiringTracker(cc.n_features, cc.cfg.dead_steps).to(device)
        return cls(Objective(cc, penalty, parallel), make_optimizer(cc, cfg), tracker, cfg)

    @property
    def crosscoder(self) -> Crosscoder:
        return self.objective.crosscoder

    def __call__(self, acts_BXD: torch.Tensor, step: int, *, with_fvu: bool = True) -> LossTerms:
        cc, parallel, cfg = self.crosscoder, self.objective.parallel, self.cfg
        bad = nonfinite_slots(acts_BXD, parallel)
        if bad:
            raise NonFiniteError(f"non-finite activations at step {step} in hookpoint(s) "
                                 f"{[cc.cfg.hookpoints[i] for i in bad]}; training stopped before using them.")
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        s = compute_loss(self.objective, acts_BXD, self.tracker.dead_H,
                         lambda_int=cfg.lambda_at(step), with_fvu=with_fvu)
        loss, s = s.loss, parallel.mean_over_ranks(s)
        if not torch.isfinite(s.loss):
            raise NonFiniteError(
                f"the loss became non-finite at step {step} (mse={float(s.mse.detach())}, aux={float(s.aux.detach())}"
                + (f", penalty={float(s.penalty.detach())}" if s.penalty is not None else "")
                + f"; the batch's largest |activation| is {float(acts_BXD.detach().abs().max()):.3g}). "
                "Huge activations in the data (check the model and the hookpoints) or a too high lr or "
                "lambda_int can cause it; nothing of this step was applied.")
        params = self.optimizer.param_groups[0]["params"]
        # zero_grad(set_to_none=True), keeping W_enc's and W_dec's gradients for this backward to
        # overwrite: mapping their 80 MB buffers anew each step cost a third of it at the paper's
        # geometry (crosscoder_lib.interactions.kernels.buffers).
        cc.grad_buffers.recycle(p for group in self.optimizer.param_groups for p in group["params"])
        with cc.grad_buffers.backward():
            loss.backward()
        parallel.average_gradients(params)
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            if not torch.isfinite(norm):
                raise NonFiniteError(f"the gradient became non-finite at step {step} (loss {float(s.loss)}); "
                                     "lower lr or lambda_int; nothing of this step was applied.")
        self.committing = True
        self.optimizer.step()
        self.tracker.update(parallel.fired_codes(s.codes, cc.n_features))
        cc.activation.commit_step()
        self.committing = False
        return s
