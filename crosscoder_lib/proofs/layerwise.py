"""The certified layer-wise error bound (SPEC §4): the crosscoder's error carried to the logits and the loss.

From the first hookpoint to the logits, at every hookpoint ``h`` the error ``e_h = x_h − x̂_h``
(model activation minus the crosscoder's reconstruction) obeys

    ‖e_{h+1}‖ ≤ Lip_h · ‖e_h‖  +  ‖F_h(x̂_h) − x̂_{h+1}‖
                propagated       explanation residual

and for an MLP the residual splits further into the interaction ``MLP(n̂2) − g`` (bounded by the
MLP interaction bound of the MLP's kind, :data:`crosscoder_lib.interactions.bound.FEATURE_WISE`)
and the single-feature error ``m̂ + g − x̂_post``. What is **certified** (a theorem, given the
per-token inputs listed next): every hookpoint bound, the bound on the logits and on the loss. What
is **measured per token, not proven for unseen inputs**: the starting error at the first hookpoint,
and the explanation residuals (computed on the reconstructed path). A compact proof would bound
those per feature instead; here they are evaluated, so this is an error *decomposition* with sound
Lipschitz factors, not a proof shorter than brute force. Lipschitz factors, all sound on the ball
of the current bound around ``x̂``: LayerNorm/RMSNorm as in :mod:`.norms`, attention (with RoPE and
grouped-query attention) as in :mod:`.attention`, the MLP of either kind as in :mod:`.mlp_change`, and

- logits ``z = N_f(x) W_U + b_U``: ``|Δz_v| ≤ ‖W_U[:,v]‖ ‖ΔN_f‖``; loss (cross-entropy):
  ``|ΔCE| ≤ max_v Δz_v − min_v Δz_v ≤ 2 max_v ‖W_U[:,v] − ū‖ · ‖ΔN_f‖``.

**A window of blocks.** A crosscoder may read blocks ``b … b+n−1`` of a deeper model
(``paper_hookpoints(n, first_block=b)``). The error starts at ``blocks.b.hook_resid_pre``; after
the window nothing is reconstructed, so the path goes on as the model itself run from the last
reconstruction (no residual) and the bound is carried through every later block by the same
factors. Those blocks' ``hook_resid_post`` are checked too (:attr:`ErrorPropagation.carried`).

The bound is compared with the actual errors at every hookpoint, on the logits and on the loss
(soundness: the fraction of tokens where it holds, which must be 1), and reported as vacuous where
the certified loss ``L̂ + mean bound`` is no better than ``log V`` (uniform).

Position policy: as :mod:`crosscoder_lib.lm.harvest` (``exclude_first``): the BOS position is not
reconstructed; its activations, the same for every sequence, are taken as known exactly.
"""

from __future__ import annotations

import torch

from crosscoder_lib.interactions.bound import FEATURE_WISE
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.lm.hookpoints import hook_block, paper_hookpoints
from crosscoder_lib.proofs.attention import attention_change_bound, attention_output, attention_weights
from crosscoder_lib.proofs.error_propagation import ErrorPropagation, cross_entropy
from crosscoder_lib.proofs.mlp_change import MLPPropagation, mlp_propagation
from crosscoder_lib.proofs.norms import norm_change_bound, norm_kind, normalise

F64 = torch.float64


class _Walk:
    """The reconstructed path and the per-hookpoint terms of the recurrence, filled block by block.

    ``x_hat`` holds the crosscoder's reconstruction at the hookpoints it reads; a step towards a
    hookpoint it does not read (after the window) puts the model's own map of the path there.
    """

    def __init__(self, x_hat: dict, first: str, bound0: torch.Tensor, start: int, eps: float, norm: str):
        self.x_hat, self.bound = x_hat, {first: bound0}
        self.prop, self.resid, self.lip, self.inter, self.single, self.scale = {}, {}, {}, {}, {}, {}
        self.start, self.eps, self.norm = start, eps, norm

    def settle(self, dst: str, value: torch.Tensor, residual: torch.Tensor | None = None) -> None:
        """``x̂_dst`` is reached from the path by ``value``: the residual is how far the
        reconstruction is from it (``residual`` when given), 0 where nothing is reconstructed."""
        if dst not in self.x_hat:
            self.x_hat[dst] = value
            residual = torch.zeros_like(self.prop[dst])
        elif residual is None:
            residual = (value - self.x_hat[dst]).norm(dim=-1)
        self.resid[dst] = residual
        self.bound[dst] = self.prop[dst] + residual


def _checked_layout(bridge, crosscoder, mlp, tokens_BS: torch.Tensor, exclude_first: bool, mlp_residual: str):
    """``(hookpoints, window blocks, start)``, after the checks that need nothing computed."""
    if mlp_residual not in ("exact", "interaction_bound"):
        raise ValueError(f"mlp_residual must be 'exact' or 'interaction_bound', got {mlp_residual!r}")
    L = bridge.cfg.n_layers
    hookpoints = list(crosscoder.cfg.hookpoints)
    first, n = hook_block(hookpoints[0]), (len(hookpoints) - 1) // 4
    if first is None or n < 1 or first + n > L or hookpoints != paper_hookpoints(n, first_block=first):
        raise ValueError(f"certified_error_bound follows the paper's layout over consecutive blocks; the crosscoder "
                         f"reads {hookpoints}, expected paper_hookpoints(n_blocks, first_block=b) with b + n_blocks "
                         f"<= {L}")
    if mlp.n_blocks != L:
        raise ValueError(f"mlp holds {mlp.n_blocks} blocks; the bound runs the model's MLPs from block {first} to the "
                         f"logits, so pass the weights of all {L} blocks (mlp_weights(bridge))")
    if mlp_residual == "interaction_bound" and mlp.kind not in FEATURE_WISE:
        raise NotImplementedError(
            f"mlp_residual='interaction_bound' needs the MLP interaction bound of a {mlp.kind!r} MLP, "
            f"crosscoder_lib.interactions.bound.FEATURE_WISE[{mlp.kind!r}], which does not exist yet (known: "
            f"{sorted(FEATURE_WISE)}); use mlp_residual='exact'")
    start = 1 if exclude_first else 0
    if tokens_BS.shape[1] - start < 2:
        raise ValueError("sequences are too short: need at least two positions after the excluded BOS")
    return hookpoints, range(first, first + n), start


def _model_activations(bridge, watched: list, blocks: range, tokens_BS: torch.Tensor, attn) -> tuple:
    """``(logits, cache, x)``: the model at every watched hookpoint and position (``x`` in float64),
    once its attention patterns in ``blocks`` (those the proof walks) are checked to be the
    re-implemented attention's."""
    ln1 = {l: f"blocks.{l}.ln1.hook_normalized" for l in blocks}
    wanted = set(watched) | set(ln1.values()) | {f"blocks.{l}.attn.hook_pattern" for l in blocks}
    logits, cache = bridge.run_with_cache(tokens_BS, names_filter=lambda n: n in wanted)
    x = {h: cache[h].to(F64) for h in watched}
    for l in blocks:  # the proof's attention must be the model's
        pat, _ = attention_output(cache[ln1[l]].to(F64), attn, l)
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


def _norm_step(w: _Walk, src: str, dst: str) -> None:
    w.prop[dst], w.lip[dst] = norm_change_bound(w.x_hat[src], w.bound[src], w.eps, w.norm)
    w.settle(dst, normalise(w.x_hat[src], w.eps, w.norm))


def _attention_step(w: _Walk, attn, l: int, pre: str, ln1: str, mid: str) -> None:
    """Attention, with the residual connection from ``resid_pre``."""
    _, attn_out = attention_output(w.x_hat[ln1], attn, l)
    w.prop[mid] = w.bound[pre] + attention_change_bound(w.x_hat[ln1], w.bound[ln1], attn, l)
    w.settle(mid, w.x_hat[pre] + attn_out)


def _padded(w: _Walk, t_TD: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    out = fill.clone()
    out[:, w.start:] = t_TD.view(fill.shape[0], fill.shape[1] - w.start, *t_TD.shape[1:])
    return out


def _mlp_step(w: _Walk, mlp_prop: MLPPropagation, l: int, names: tuple, fw) -> None:
    """The MLP, with the residual connection from ``resid_mid``; ``fw``: the block's feature-wise
    MLP when the residual's interaction part is replaced by its bound, else None (exact residual)."""
    mid, ln2, post = names
    mlp_out, change, w.lip[post] = mlp_prop.through(w.x_hat[ln2], w.bound[ln2], l)
    w.prop[post] = w.bound[mid] + change
    if fw is None:
        w.settle(post, w.x_hat[mid] + mlp_out)
        return
    w.inter[post] = _padded(w, fw.bound_mid_T, torch.zeros_like(w.bound[mid]))
    g = _padded(w, fw.g_TD, w.x_hat[post] - w.x_hat[mid])  # at BOS: exact, so no single-feature error
    w.single[post] = (w.x_hat[mid] + g - w.x_hat[post]).norm(dim=-1)
    w.settle(post, w.x_hat[mid] + mlp_out, w.inter[post] + w.single[post])


def _block(w: _Walk, attn, mlp_prop: MLPPropagation, l: int, names: tuple, fw) -> None:
    pre, ln1, mid, ln2, post = names
    _norm_step(w, pre, ln1)
    _attention_step(w, attn, l, pre, ln1, mid)
    _norm_step(w, mid, ln2)
    _mlp_step(w, mlp_prop, l, (mid, ln2, post), fw)


def _carry(w: _Walk, attn, mlp_prop: MLPPropagation, l: int, pre: str, x: dict, actual: dict) -> str:
    """Block ``l`` after the window: the model's own map of the path, the bound carried through it,
    checked at its ``hook_resid_post`` (returned). Only that hookpoint's path is kept (memory)."""
    names = (pre, *(f"blocks.{l}.{s}" for s in ("ln1.hook_normalized", "hook_resid_mid", "ln2.hook_normalized",
                                                 "hook_resid_post")))
    _block(w, attn, mlp_prop, l, names, None)
    post = names[-1]
    actual[post] = (x[post] - w.x_hat[post]).norm(dim=-1)
    w.scale[post] = 1 + w.x_hat[post].norm(dim=-1)
    for h in names[1:-1]:
        del w.x_hat[h]
    return post


@torch.no_grad()
def certified_error_bound(bridge, crosscoder, mlp, tokens_BS: torch.Tensor, *, exclude_first: bool = True,
                          mlp_residual: str = "exact", chunk_tokens: int = 256) -> ErrorPropagation:
    """Carry the crosscoder's error from the first hookpoint to the logits and the loss (module docstring).

    ``tokens_BS``: BOS-first LongTensor ``[n_seq, S]``. The crosscoder must use the paper's
    hookpoints over consecutive blocks (``paper_hookpoints(n_blocks, first_block=b)``); ``mlp``:
    the model's MLP weights of every block, of any kind (``mlp_weights(bridge)``). ``mlp_residual``:
    ``"exact"`` evaluates the MLP explanation residual ``m̂ + MLP(n̂2) − x̂_post``;
    ``"interaction_bound"`` replaces its interaction part by the MLP interaction bound ("mid"),
    i.e. ``‖ε‖_bound + ‖m̂ + g − x̂_post‖``.
    """
    hookpoints, window, start = _checked_layout(bridge, crosscoder, mlp, tokens_BS, exclude_first, mlp_residual)
    norm, mlp_prop = norm_kind(bridge), mlp_propagation(mlp, window[0])
    after = range(window[-1] + 1, bridge.cfg.n_layers)
    carried = [f"blocks.{l}.hook_resid_post" for l in after]
    tokens_BS = tokens_BS.to(bridge.cfg.device)
    attn = attention_weights(bridge, tokens_BS[:1])
    logits, cache, x = _model_activations(bridge, hookpoints + carried, range(window[0], after.stop), tokens_BS, attn)
    codes, x_hat = _reconstruction(crosscoder, cache, x, hookpoints, start)
    actual = {h: (x[h] - x_hat[h]).norm(dim=-1) for h in hookpoints}
    w = _Walk(x_hat, hookpoints[0], actual[hookpoints[0]].clone(), start, float(bridge.cfg.eps), norm)
    fw = None
    if mlp_residual == "interaction_bound":
        fw = MLPInteractions.of(crosscoder, mlp.select(slice(window[0], window[-1] + 1))).feature_wise(codes,
                                                                                                       chunk_tokens)
    for i, l in enumerate(window):
        _block(w, attn, mlp_prop, l, tuple(hookpoints[4 * i:4 * i + 5]), fw[i] if fw is not None else None)
    last = hookpoints[-1]
    for l in after:
        post = _carry(w, attn, mlp_prop, l, last, x, actual)
        if last in carried:  # it was only the input of block l
            del w.x_hat[last]
        last = post
    w.scale.update({h: 1 + w.x_hat[h].norm(dim=-1) for h in hookpoints})
    return _logits_and_loss(bridge, w, hookpoints, carried, logits, tokens_BS, actual)


def _unembedding(bridge) -> tuple[torch.Tensor, torch.Tensor]:
    W_U = bridge.W_U.detach().to(F64)
    try:
        b_U = bridge.b_U.detach().to(F64)
    except AttributeError:  # a bias-free bridge raises instead of returning zeros
        b_U = torch.zeros(W_U.shape[1], dtype=F64, device=W_U.device)
    return W_U, b_U


def _logits_and_loss(bridge, w: _Walk, hookpoints: list, carried: list, logits: torch.Tensor,
                     tokens_BS: torch.Tensor, actual: dict) -> ErrorPropagation:
    """The last hookpoint's bound carried through the final norm to the logits and the loss."""
    last, start = (carried or hookpoints)[-1], w.start
    n_seq = tokens_BS.shape[0]
    W_U, b_U = _unembedding(bridge)
    d_ln, w.lip["logits"] = norm_change_bound(w.x_hat[last], w.bound[last], w.eps, w.norm)
    col = W_U.norm(dim=0)
    spread = (W_U - W_U.mean(1, keepdim=True)).norm(dim=0).max()
    logits_hat = normalise(w.x_hat[last], w.eps, w.norm) @ W_U + b_U
    z = logits.to(F64)
    targets = tokens_BS[:, 1:]
    ce, ce_hat = cross_entropy(z[:, :-1], targets), cross_entropy(logits_hat[:, :-1], targets)
    pad = torch.zeros(n_seq, 1, dtype=F64, device=z.device)
    scale = {h: w.scale[h] for h in hookpoints + carried}
    scale["logits"] = 1 + logits_hat.abs().amax(-1)
    scale["loss"] = 1 + torch.cat([ce_hat, pad], 1)
    return ErrorPropagation(
        hookpoints=hookpoints, actual=actual, bound=w.bound, propagated=w.prop, residual=w.resid, lipschitz=w.lip,
        interaction=w.inter, single_feature=w.single, logit_actual=(z - logits_hat).abs().amax(-1),
        logit_bound=col.max() * d_ln, loss_actual=torch.cat([(ce - ce_hat).abs(), pad], 1),
        loss_bound=2 * spread * d_ln, loss_model=float(ce[:, start:].mean()),
        loss_explained=float(ce_hat[:, start:].mean()), scale=scale, start=start, vocab_size=W_U.shape[1],
        carried=tuple(carried),
    )
