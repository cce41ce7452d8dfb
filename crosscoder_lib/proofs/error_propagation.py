"""What the layer-wise bound reports (:func:`crosscoder_lib.proofs.layerwise.certified_error_bound`):
per hookpoint, per token, the actual error and its certified bound, and how to check and summarise them."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from crosscoder_lib.interactions.bound import soundness, tightness


def cross_entropy(logits_BSV: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy ``[B, S]`` of logits ``[B, S, V]``."""
    return F.cross_entropy(logits_BSV.flatten(0, 1), targets_BS.flatten(), reduction="none").view(targets_BS.shape)


class ErrorPropagation(NamedTuple):
    """Result of :func:`certified_error_bound`; per-token tensors are ``[n_seq, S]`` (float64).

    Per hookpoint (dicts keyed by hook name): ``actual`` ‖x_h − x̂_h‖, ``bound`` (certified),
    ``propagated`` (Lip·previous bound), ``residual`` (explanation residual used), ``lipschitz``
    (the local factor used; absent for the first hookpoint). For MLP outputs also ``interaction``
    (the bound (a), or the exact interaction error) and ``single_feature``. Positions before
    ``start`` (BOS) are exact (0) and excluded from the summaries. For a crosscoder over a window
    of blocks, :attr:`carried` names the ``hook_resid_post`` of every later block, checked like
    the hookpoints (``bound``, ``propagated``, ``residual`` (0), ``lipschitz`` also hold their
    blocks' other hookpoints, unchecked).
    """

    hookpoints: list
    actual: dict
    bound: dict
    propagated: dict
    residual: dict
    lipschitz: dict
    interaction: dict
    single_feature: dict
    logit_actual: torch.Tensor
    """``max_v |z_v − ẑ_v|``: model logits vs logits of the reconstructed final residual."""
    logit_bound: torch.Tensor
    loss_actual: torch.Tensor
    """``|CE(z) − CE(ẑ)|`` per predicted token (positions ``start … S−2``)."""
    loss_bound: torch.Tensor
    loss_model: float
    loss_explained: float
    scale: dict
    """Activation scale per token (``1 + ‖x̂_h‖``; logits ``1 + max|ẑ|``; loss ``1 + CE(ẑ)``) for round-off tolerances."""
    start: int
    vocab_size: int
    carried: tuple = ()
    """After a window: each later block's ``hook_resid_post``, where the path is the model run from
    the window's last reconstruction (empty when the crosscoder reads every block)."""

    @property
    def loss_upper(self) -> float:
        """Certified upper bound on the model's loss: ``L̂ + mean bound``."""
        return self.loss_explained + float(self.loss_bound[:, self.start:-1].mean())

    @property
    def vacuous(self) -> bool:
        """True when the certified loss bound is no better than a uniform guess (``log V``)."""
        return self.loss_upper >= math.log(self.vocab_size)

    def soundness(self, rtol: float = 1e-5) -> dict:
        """Fraction of tokens where each bound holds, up to float32 round-off of the model's own
        forward pass: ``rtol`` times the activation scale of the token (:attr:`scale`)."""
        out = {}
        for h in list(self.hookpoints) + list(self.carried):
            out[h] = soundness(self.bound[h][:, self.start:], self.actual[h][:, self.start:],
                               atol=rtol * self.scale[h][:, self.start:])
        for name, b, a in (("logits", self.logit_bound, self.logit_actual), ("loss", self.loss_bound, self.loss_actual)):
            out[name] = soundness(b[:, self.start:-1], a[:, self.start:-1], atol=rtol * self.scale[name][:, self.start:-1])
        return out

    def summary(self) -> dict:
        """Median actual error, bound and tightness (bound/actual) per hookpoint, logits and loss."""
        rows = {}
        pairs = [(h, self.bound[h][:, self.start:], self.actual[h][:, self.start:])
                 for h in list(self.hookpoints) + list(self.carried)]
        pairs += [("logits", self.logit_bound[:, self.start:-1], self.logit_actual[:, self.start:-1]),
                  ("loss", self.loss_bound[:, self.start:-1], self.loss_actual[:, self.start:-1])]
        for name, b, a in pairs:
            ratio = tightness(b, a)
            rows[name] = {"actual": float(a.median()), "bound": float(b.median()),
                          "tightness": float(ratio.median()) if ratio.numel() else float("nan")}
        return rows
