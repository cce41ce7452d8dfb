"""The certified layer-wise error bound (SPEC §4): the crosscoder's error carried to the logits and the loss.

From the first hookpoint to the logits, at every hookpoint ``h`` the error ``e_h = x_h − x̂_h``
(model activation minus the crosscoder's reconstruction) obeys

    ‖e_{h+1}‖ ≤ Lip_h · ‖e_h‖  +  ‖F_h(x̂_h) − x̂_{h+1}‖
                propagated       explanation residual

and for an MLP the residual splits further into the interaction ``MLP(n̂2) − g`` (bounded by the
MLP interaction bound, :mod:`crosscoder_lib.interactions.bound`) and the single-feature error
``m̂ + g − x̂_post``. What is **certified** (a theorem, given the per-token inputs listed next): every
hookpoint bound, the bound on the logits and on the loss. What is **measured per token, not proven
for unseen inputs**: the starting error at the first hookpoint, and the explanation residuals
(computed on the reconstructed path). A compact proof would bound those per feature instead; here
they are evaluated, so this is an error *decomposition* with sound Lipschitz factors, not a proof
shorter than brute force. Lipschitz factors, all sound on the ball of the current bound around
``x̂``: LayerNorm and attention as in :mod:`crosscoder_lib.proofs.attention`, and

- MLP: ``Lip(σ) · min(‖W_in‖₂‖W_out‖₂, Σ_n ‖W_in[:,n]‖‖W_out[n]‖)``;
- logits ``z = LN_f(x) W_U + b_U``: ``|Δz_v| ≤ ‖W_U[:,v]‖ ‖ΔLN_f‖``; loss (cross-entropy):
  ``|ΔCE| ≤ max_v Δz_v − min_v Δz_v ≤ 2 max_v ‖W_U[:,v] − ū‖ · ‖ΔLN_f‖``.

The bound is compared with the actual errors at every hookpoint, on the logits and on the loss
(soundness: the fraction of tokens where it holds, which must be 1), and reported as vacuous where
the certified loss ``L̂ + mean bound`` is no better than ``log V`` (uniform).

Position policy: as :mod:`crosscoder_lib.lm.harvest` (``exclude_first``): the BOS position is not
reconstructed; its activations, the same for every sequence, are taken as known exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from crosscoder_lib.interactions.bound import soundness, tightness
from crosscoder_lib.interactions.mlp import MLPWeights, activation, lipschitz
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.proofs.attention import attention_change_bound, attention_output, attention_weights, spectral_norm
from crosscoder_lib.proofs.norms import layer_norm, layer_norm_change_bound

F64 = torch.float64


def _cross_entropy(logits_BSV: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_BSV.flatten(0, 1), targets_BS.flatten(), reduction="none").view(targets_BS.shape)


class ErrorPropagation(NamedTuple):
    """Result of :func:`certified_error_bound`; per-token tensors are ``[n_seq, S]`` (float64).

    Per hookpoint (dicts keyed by hook name): ``actual`` ‖x_h − x̂_h‖, ``bound`` (certified),
    ``propagated`` (Lip·previous bound), ``residual`` (explanation residual used), ``lipschitz``
    (the local factor used; absent for the first hookpoint). For MLP outputs also ``interaction``
    (the bound (a), or the exact interaction error) and ``single_feature``. Positions before
    ``start`` (BOS) are exact (0) and excluded from the summaries.
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
        for h in self.hookpoints:
            out[h] = soundness(self.bound[h][:, self.start:], self.actual[h][:, self.start:],
                               atol=rtol * self.scale[h][:, self.start:])
        for name, b, a in (("logits", self.logit_bound, self.logit_actual), ("loss", self.loss_bound, self.loss_actual)):
            out[name] = soundness(b[:, self.start:-1], a[:, self.start:-1], atol=rtol * self.scale[name][:, self.start:-1])
        return out

    def summary(self) -> dict:
        """Median actual error, bound and tightness (bound/actual) per hookpoint, logits and loss."""
        rows = {}
        pairs = [(h, self.bound[h][:, self.start:], self.actual[h][:, self.start:]) for h in self.hookpoints]
        pairs += [("logits", self.logit_bound[:, self.start:-1], self.logit_actual[:, self.start:-1]),
                  ("loss", self.loss_bound[:, self.start:-1], self.loss_actual[:, self.start:-1])]
        for name, b, a in pairs:
            ratio = tightness(b, a)
            rows[name] = {"actual": float(a.median()), "bound": float(b.median()),
                          "tightness": float(ratio.median()) if ratio.numel() else float("nan")}
        return rows



class _Walk(NamedTuple):
    """The reconstructed path and the per-hookpoint terms of the recurrence, filled block by block."""

    x_hat: dict
    bound: dict
    prop: dict
    resid: dict
    lip: dict
    inter: dict
    single: dict
    start: int
    eps: float


def _checked_layout(bridge, crosscoder, tokens_BS: torch.Tensor, exclude_first: bool, mlp_residual: str):
    """``(hookpoints, start)``, after the checks that need nothing computed."""
    if mlp_residual not in ("exact", "interaction_bound"):
        raise ValueError(f"mlp_residual must be 'exact' or 'interaction_bound', got {mlp_residual!r}")
    L = bridge.cfg.n_layers
    hookpoints = list(crosscoder.cfg.hookpoints)
    if hookpoints != paper_hookpoints(L):
        raise ValueError(f"certified_error_bound follows the paper's layout; the crosscoder reads {hookpoints}, "
                         f"expected paper_hookpoints({L})")
    start = 1 if exclude_first else 0
    if tokens_BS.shape[1] - start < 2:
        raise ValueError("sequences are too short: need at least two positions after the excluded BOS")
    return hookpoints, start


def _model_activations(bridge, hookpoints: list, tokens_BS: torch.Tensor, attn) -> tuple:
    """``(logits, cache, x)``: the model at every hookpoint and position (``x`` in float64), once its
    attention patterns are checked to be the re-implemented attention's."""
    L = bridge.cfg.n_layers
    wanted = set(hookpoints) | {f"blocks.{l}.attn.hook_pattern" for l in range(L)}
    logits, cache = bridge.run_with_cache(tokens_BS, names_filter=lambda n: n in wanted)
    x = {h: cache[h].to(F64) for h in hookpoints}
    for l in range(L):  # the proof's attention must be the model's
        pat, _ = attention_output(x[f"blocks.{l}.ln1.hook_normalized"], attn, l)
        err = float((pat - cache[f"blocks.{l}.attn.hook_pattern"].to(F64)).abs().max())
        if err > 1e-4:
            raise ValueError(f"block {l}: the re-implemented attention pattern differs from the model's by {err:.2e}")
    return logits, cache, x


def _reconstruction(crosscoder, cache, x: dict, hookpoints: list, start: int) -> tuple:
    """``(codes, x_hat)``: the crosscoder's codes and reconstruction (BOS position taken as known)."""
    n_seq, S = x[hookpoints[0]].shape[:2]
    was_training = crosscoder.training
    crosscoder.eval()
    try:
        acts = torch.stack([cache[h][:, start:] for h in hookpoints], dim=2).flatten(0, 1)
        codes = crosscoder.encode(acts.to(crosscoder.W_dec_HXD.device).float())
        recon = crosscoder.decode(codes).to(F64).view(n_seq, S - start, len(hookpoints), -1)
    finally:
        crosscoder.train(was_training)
    x_hat = {}
    for i, h in enumerate(hookpoints):
        x_hat[h] = x[h].clone()
        x_hat[h][:, start:] = recon[:, :, i]
    return codes, x_hat


def _mlp_lipschitz(mlp64: MLPWeights) -> torch.Tensor:
    """``Lip(σ) · min(‖W_in‖₂‖W_out‖₂, Σ_n ‖W_in[:,n]‖‖W_out[n]‖)`` per block ``[L]``."""
    W_in, W_out = mlp64.W_in_LDN, mlp64.W_out_LND
    return lipschitz(mlp64.act_fn) * torch.minimum(spectral_norm(W_in) * spectral_norm(W_out),
                                                   (W_in.norm(dim=1) * W_out.norm(dim=2)).sum(-1))


def _layer_norm_step(w: _Walk, src: str, dst: str) -> None:
    w.prop[dst], w.lip[dst] = layer_norm_change_bound(w.x_hat[src], w.bound[src], w.eps)
    w.resid[dst] = (layer_norm(w.x_hat[src], w.eps) - w.x_hat[dst]).norm(dim=-1)
    w.bound[dst] = w.prop[dst] + w.resid[dst]


def _attention_step(w: _Walk, attn, l: int, pre: str, ln1: str, mid: str) -> None:
    """Attention, with the residual connection from ``resid_pre``."""
    _, attn_out = attention_output(w.x_hat[ln1], attn, l)
    w.prop[mid] = w.bound[pre] + attention_change_bound(w.x_hat[ln1], w.bound[ln1], attn, l)
    w.resid[mid] = (w.x_hat[pre] + attn_out - w.x_hat[mid]).norm(dim=-1)
    w.bound[mid] = w.prop[mid] + w.resid[mid]


def _padded(w: _Walk, t_TD: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    out = fill.clone()
    out[:, w.start:] = t_TD.view(fill.shape[0], fill.shape[1] - w.start, *t_TD.shape[1:])
    return out


def _mlp_step(w: _Walk, mlp64: MLPWeights, lip_l: torch.Tensor, l: int, names: tuple, fw) -> None:
    """The MLP, with the residual connection from ``resid_mid``; ``fw``: the block's feature-wise
    MLP when the residual's interaction part is replaced by its bound, else None (exact residual)."""
    mid, ln2, post = names
    n_seq, S = w.bound[mid].shape
    w.lip[post] = lip_l.expand(n_seq, S)
    w.prop[post] = w.bound[mid] + lip_l * w.bound[ln2]
    mlp_out = activation(w.x_hat[ln2] @ mlp64.W_in_LDN[l] + mlp64.b_in_LN[l], mlp64.act_fn) @ mlp64.W_out_LND[l] \
        + mlp64.b_out_LD[l]
    exact = (w.x_hat[mid] + mlp_out - w.x_hat[post]).norm(dim=-1)
    if fw is None:
        w.resid[post] = exact
    else:
        w.inter[post] = _padded(w, fw.bound_mid_T, torch.zeros(n_seq, S, dtype=F64))
        g = _padded(w, fw.g_TD, w.x_hat[post] - w.x_hat[mid])  # at BOS: exact, so no single-feature error
        w.single[post] = (w.x_hat[mid] + g - w.x_hat[post]).norm(dim=-1)
        w.resid[post] = w.inter[post] + w.single[post]
    w.bound[post] = w.prop[post] + w.resid[post]


def _logits_and_loss(bridge, w: _Walk, hookpoints: list, logits: torch.Tensor, tokens_BS: torch.Tensor,
                     actual: dict) -> ErrorPropagation:
    """The last hookpoint's bound carried through the final LayerNorm to the logits and the loss."""
    last, start = hookpoints[-1], w.start
    n_seq = tokens_BS.shape[0]
    W_U, b_U = bridge.W_U.detach().to(F64), bridge.b_U.detach().to(F64)
    d_ln, w.lip["logits"] = layer_norm_change_bound(w.x_hat[last], w.bound[last], w.eps)
    col = W_U.norm(dim=0)
    spread = (W_U - W_U.mean(1, keepdim=True)).norm(dim=0).max()
    logits_hat = layer_norm(w.x_hat[last], w.eps) @ W_U + b_U
    z = logits.to(F64)
    targets = tokens_BS[:, 1:]
    ce, ce_hat = _cross_entropy(z[:, :-1], targets), _cross_entropy(logits_hat[:, :-1], targets)
    pad = torch.zeros(n_seq, 1, dtype=F64)
    scale = {h: 1 + w.x_hat[h].norm(dim=-1) for h in hookpoints}
    scale["logits"] = 1 + logits_hat.abs().amax(-1)
    scale["loss"] = 1 + torch.cat([ce_hat, pad], 1)
    return ErrorPropagation(
        hookpoints=hookpoints, actual=actual, bound=w.bound, propagated=w.prop, residual=w.resid, lipschitz=w.lip,
        interaction=w.inter, single_feature=w.single, logit_actual=(z - logits_hat).abs().amax(-1),
        logit_bound=col.max() * d_ln, loss_actual=torch.cat([(ce - ce_hat).abs(), pad], 1),
        loss_bound=2 * spread * d_ln, loss_model=float(ce[:, start:].mean()),
        loss_explained=float(ce_hat[:, start:].mean()), scale=scale, start=start, vocab_size=W_U.shape[1],
    )


@torch.no_grad()
def certified_error_bound(bridge, crosscoder, mlp: MLPWeights, tokens_BS: torch.Tensor, *,
                          exclude_first: bool = True, mlp_residual: str = "exact",
                          chunk_tokens: int = 256) -> ErrorPropagation:
    """Carry the crosscoder's error from the first hookpoint to the logits and the loss (module docstring).

    ``tokens_BS``: BOS-first LongTensor ``[n_seq, S]``. The crosscoder must use the paper's
    hookpoints (``paper_hookpoints(n_blocks)``). ``mlp_residual``: ``"exact"`` evaluates the MLP
    explanation residual ``m̂ + MLP(n̂2) − x̂_post``; ``"interaction_bound"`` replaces its
    interaction part by the MLP interaction bound ("mid"), i.e. ``‖ε‖_bound + ‖m̂ + g − x̂_post‖``.
    """
    hookpoints, start = _checked_layout(bridge, crosscoder, tokens_BS, exclude_first, mlp_residual)
    tokens_BS = tokens_BS.to(bridge.cfg.device)
    attn = attention_weights(bridge, tokens_BS[:1])
    logits, cache, x = _model_activations(bridge, hookpoints, tokens_BS, attn)
    codes, x_hat = _reconstruction(crosscoder, cache, x, hookpoints, start)
    actual = {h: (x[h] - x_hat[h]).norm(dim=-1) for h in hookpoints}
    w = _Walk(x_hat, {hookpoints[0]: actual[hookpoints[0]].clone()}, {}, {}, {}, {}, {}, start, float(bridge.cfg.eps))
    mlp64 = mlp.to(dtype=F64)
    mlp_lip = _mlp_lipschitz(mlp64)
    fw = None
    if mlp_residual == "interaction_bound":
        fw = MLPInteractions.of(crosscoder, mlp).feature_wise(codes, chunk_tokens)
    for l in range(bridge.cfg.n_layers):
        pre, ln1, mid, ln2 = (f"blocks.{l}.{s}" for s in
                              ("hook_resid_pre", "ln1.hook_normalized", "hook_resid_mid", "ln2.hook_normalized"))
        _layer_norm_step(w, pre, ln1)
        _attention_step(w, attn, l, pre, ln1, mid)
        _layer_norm_step(w, mid, ln2)
        _mlp_step(w, mlp64, mlp_lip[l], l, (mid, ln2, hookpoints[4 * l + 4]), fw[l] if fw is not None else None)
    return _logits_and_loss(bridge, w, hookpoints, logits, tokens_BS, actual)
