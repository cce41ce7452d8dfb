"""How good is a crosscoder: reconstruction (FVU, L0, dead features) and LM loss when spliced in.

**Reconstruction** (:func:`evaluate_reconstruction`), over a set of raw activations, with the
crosscoder in eval mode (BatchTopK uses its inference threshold):

- FVU of hookpoint ``x``: ``Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − mean_t x_t‖²`` (scale-free);
- overall FVU: the same ratio summed over hookpoints in the normalised units the loss uses
  (``s_x x_x``), so each hookpoint weighs as in training;
- L0: mean number of active features per token; dead fraction: features that never fire on the
  evaluated tokens (so it falls as more tokens are evaluated; the trainer's firing tracker counts
  training steps without firing instead, and is usually lower: a feature that fires once every
  few hundred steps is alive to the tracker but may not fire on a held-out set).

**Spliced loss recovered** (:func:`spliced_loss_recovered`): for each hookpoint, the language
model runs with that hookpoint's activation replaced by the crosscoder's reconstruction (made from
all hookpoints of the same forward pass) at every harvested position, and

    recovered = (L_zero − L_splice) / (L_zero − L_clean)

where the baseline ``L_zero`` **zero-ablates** the hookpoint at the same positions. 1 means the
reconstruction is as good as the truth, 0 as bad as deleting the activation. Losses are next-token
cross-entropies averaged over the predictions made *from* spliced positions (the first, BOS
position is never spliced under the harvest policy, so the prediction made from it is left out).

TransformerBridge quirk handled here: its ``blocks.l.hook_resid_mid`` is the input hook of
``ln2`` and patching it changes only what the MLP reads, not the residual stream that skips the
MLP. :func:`splice_hooks` detects that (once per model) and adds the same change to
``hook_mlp_out``, so a spliced ``resid_mid`` replaces the residual stream itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch

from crosscoder_lib.crosscoder.activations import l0 as l0_of
from crosscoder_lib.lm.harvest import harvest
from crosscoder_lib.lm.patching import patched_losses, positions_replaced


class ReconstructionEval(NamedTuple):
    """Result of :func:`evaluate_reconstruction` (``._asdict()`` is JSON-ready)."""

    fvu: float
    """Overall fraction of variance unexplained (normalised units, summed over hookpoints)."""
    fvu_per_hookpoint: dict
    """Hook name -> FVU at that hookpoint."""
    l0: float
    """Mean active features per token."""
    dead_fraction: float
    """Fraction of features that never fired on these activations."""
    n_tokens: int
    """Positions evaluated."""


@torch.no_grad()
def evaluate_reconstruction(crosscoder, acts, *, batch_size: int = 1024) -> ReconstructionEval:
    """FVU (overall and per hookpoint), L0 and dead fraction on ``acts``: a tensor ``[T, X, D]``
    or an iterable of ``[B, X, D]`` batches of raw activations."""
    was_training = crosscoder.training
    crosscoder.eval()
    X, H = crosscoder.n_slots, crosscoder.n_features
    device = crosscoder.W_dec_HXD.device
    batches = (acts.split(batch_size) if isinstance(acts, torch.Tensor) else acts)
    sum_X = sq_X = err_X = None
    n, l0_sum = 0, 0.0
    fired_H = torch.zeros(H, dtype=torch.bool, device=device)
    try:
        for x in batches:
            x = x.to(device)
            out = crosscoder(x)
            x64, r64 = x.double(), out.recon_BXD.double()
            if sum_X is None:
                sum_X = torch.zeros(X, x.shape[-1], dtype=torch.float64, device=device)
                sq_X = torch.zeros(X, dtype=torch.float64, device=device)
                err_X = torch.zeros(X, dtype=torch.float64, device=device)
            sum_X += x64.sum(0)
            sq_X += x64.pow(2).sum((0, 2))
            err_X += (x64 - r64).pow(2).sum((0, 2))
            n += len(x)
            l0_sum += float(l0_of(out.codes).sum())
            fired_H[out.codes.idx_BK[out.codes.val_BK != 0]] = True
    finally:
        crosscoder.train(was_training)
    if n == 0:
        raise ValueError("no activations to evaluate")
    var_X = sq_X - sum_X.pow(2).sum(-1) / n
    s2_X = crosscoder.input_scale_X.double().pow(2)
    fvu_X = err_X / var_X.clamp_min(1e-30)
    return ReconstructionEval(
        fvu=float((s2_X * err_X).sum() / (s2_X * var_X).sum().clamp_min(1e-30)),
        fvu_per_hookpoint={h: float(f) for h, f in zip(crosscoder.cfg.hookpoints, fvu_X)},
        l0=l0_sum / n,
        dead_fraction=float(1 - fired_H.float().mean()),
        n_tokens=n,
    )


# -- splicing ---------------------------------------------------------------------------------------

_PROPAGATES: dict[tuple[int, str], bool] = {}


@torch.no_grad()
def _patch_reaches_residual(model, hook_name: str) -> bool:
    """Whether replacing ``blocks.l.hook_resid_mid`` changes ``hook_resid_post`` beyond the MLP's
    own change (it does not in TransformerBridge, where the hook is ``ln2.hook_in``)."""
    key = (id(model), hook_name)
    if key not in _PROPAGATES:
        block = hook_name.split(".")[1]
        post, mlp_out = f"blocks.{block}.hook_resid_post", f"blocks.{block}.hook_mlp_out"
        tokens = torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device)
        seen = {}

        def grab(name):
            def hook(act, hook):
                seen[name] = act.detach().clone()
            return hook

        def shift(act, hook):
            return act + 1.0

        def run(extra):
            seen.clear()
            model.run_with_hooks(tokens, fwd_hooks=extra + [(post, grab("post")), (mlp_out, grab("mlp"))])
            return seen["post"] - seen["mlp"]

        clean = run([])
        shifted = run([(hook_name, shift)])
        _PROPAGATES[key] = bool(((shifted - clean) - 1.0).abs().max() < 1e-3)
    return _PROPAGATES[key]


def splice_hooks(model, hook_name: str, new_fn: Callable[[torch.Tensor], torch.Tensor]) -> list:
    """Forward hooks that replace ``hook_name``'s activation ``act_BSD`` by ``new_fn(act_BSD)``
    such that everything downstream sees the replacement (handles the resid_mid quirk)."""
    delta = {}

    def replace(act, hook):
        new = new_fn(act)
        delta["d"] = new - act
        return new

    hooks = [(hook_name, replace)]
    if hook_name.endswith("hook_resid_mid") and not _patch_reaches_residual(model, hook_name):
        block = hook_name.split(".")[1]

        def add_delta(act, hook):
            return act + delta["d"]

        hooks.append((f"blocks.{block}.hook_mlp_out", add_delta))
    return hooks


class SpliceEval(NamedTuple):
    """Result of :func:`spliced_loss_recovered` (``._asdict()`` is JSON-ready)."""

    loss_clean: float
    """Mean next-token loss of the unmodified model."""
    loss_zero: dict
    """Hook name -> loss with that hookpoint zero-ablated (the baseline)."""
    loss_splice: dict
    """Hook name -> loss with that hookpoint replaced by its reconstruction."""
    recovered: dict
    """Hook name -> ``(L_zero − L_splice) / (L_zero − L_clean)``."""
    baseline: str
    """The ablation baseline: ``"zero"``."""
    n_tokens: int
    """Predictions averaged over."""


@torch.no_grad()
def spliced_loss_recovered(model, crosscoder, token_batches: Iterable[torch.Tensor], *,
                           hookpoints: list[str] | None = None, exclude_first: bool = True,
                           max_batches: int | None = None) -> SpliceEval:
    """Loss recovered per hookpoint when its reconstruction is spliced into ``model`` (a
    TransformerBridge), over ``token_batches`` (LongTensor ``[B, S]``); zero-ablation baseline.

    ``hookpoints``: a subset of the crosscoder's to evaluate (default: all of them).
    """
    names = list(crosscoder.cfg.hookpoints)
    chosen = names if hookpoints is None else list(hookpoints)
    missing = [h for h in chosen if h not in names]
    if missing:
        raise ValueError(f"hookpoint(s) {missing} are not read by this crosscoder; it reads {names}")
    start = 1 if exclude_first else 0
    device = crosscoder.W_dec_HXD.device

    def variants(tokens):
        n_seq, seq = tokens.shape
        acts = harvest(model, tokens, names, exclude_first=exclude_first)
        recon_BSXD = crosscoder(acts.to(device)).recon_BXD.view(n_seq, seq - start, len(names), -1)
        for h in chosen:
            x = names.index(h)
            yield ("splice", h), splice_hooks(model, h, lambda act, x=x: positions_replaced(act, recon_BSXD[:, :, x], start))
            yield ("zero", h), splice_hooks(model, h, lambda act: positions_replaced(act, 0, start))

    was_training = crosscoder.training
    crosscoder.eval()
    try:
        losses = patched_losses(model, token_batches, variants, start=start, max_batches=max_batches)
    finally:
        crosscoder.train(was_training)
    clean = losses.clean
    zero = {h: losses.patched[("zero", h)] for h in chosen}
    splice = {h: losses.patched[("splice", h)] for h in chosen}
    recovered = {h: (zero[h] - splice[h]) / (zero[h] - clean) if zero[h] != clean else float("nan")
                 for h in chosen}
    return SpliceEval(clean, zero, splice, recovered, "zero", losses.n_tokens)
