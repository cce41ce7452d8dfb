"""Checkers of chapter 1 (crosscoders): the acausal encoder, BatchTopK, its inference threshold (the
estimate and its use), and the decoder-norm-weighted L1 penalty of a ReLU crosscoder.

References: :meth:`~crosscoder_lib.crosscoder.model.Crosscoder.pre_activations`,
:class:`~crosscoder_lib.crosscoder.activations.BatchTopK` (training-mode selection, threshold
estimate, eval mode) and :meth:`~crosscoder_lib.crosscoder.activations.ReLU.sparsity_penalty` with
:meth:`~crosscoder_lib.crosscoder.model.Crosscoder.decoder_norms_H`.
"""

from __future__ import annotations

import torch

from crosscoder_lib.crosscoder.activations import BatchTopK, SparseCodes, TopK, codes_to_dense
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.exercises.harness import Exercise, gives, leaf, reference_gradient, when
from crosscoder_lib.lm.hookpoints import paper_hookpoints

F64 = torch.float64


def _crosscoder(n_blocks: int, d_model: int, n_features: int, seed: int, **cfg) -> Crosscoder:
    """A float64 crosscoder with random encoder, decoder and encoder bias, and unequal input scales."""
    g = torch.Generator().manual_seed(seed)
    cc = Crosscoder(CrosscoderConfig(hookpoints=paper_hookpoints(n_blocks), d_model=d_model,
                                     n_features=n_features, **{"k": 2, **cfg})).double()
    with torch.no_grad():
        cc.W_enc_XDH.copy_(torch.randn(cc.W_enc_XDH.shape, generator=g, dtype=F64))
        cc.W_dec_HXD.copy_(torch.randn(cc.W_dec_HXD.shape, generator=g, dtype=F64))
        cc.b_enc_H.copy_(torch.randn(n_features, generator=g, dtype=F64))
        cc.input_scale_X.copy_(torch.rand(cc.n_slots, generator=g, dtype=F64) + 0.5)
    return cc


def check_encoder(fn) -> None:
    """Exercise 1.1: ``fn(x_BXD, scale_X, W_enc_XDH, b_enc_H) -> pre_BH`` against ``pre_activations``."""
    ex = Exercise("1.1", "the acausal encoder", fn,
                  "pre[b, h] = Σ_x Σ_d (s_x · x[b, x, d]) · W_enc[x, d, h] + b_enc[h]: one matrix per slot, "
                  "summed over ALL slots (that is what makes it acausal)")
    for case, n_blocks, B in (("one block (5 slots)", 1, 6), ("two blocks (9 slots)", 2, 4),
                              ("a single token", 1, 1)):
        cc = _crosscoder(n_blocks, 4, 6, seed=n_blocks + B)
        x = torch.randn(B, cc.n_slots, 4, generator=torch.Generator().manual_seed(B), dtype=F64) * 3
        s, W, b = cc.input_scale_X.detach(), cc.W_enc_XDH.detach(), cc.b_enc_H.detach()
        got = ex.call(case, x, s, W, b)
        expected = cc.pre_activations(x).detach()
        ex.close(case, "pre_BH", got, expected, dims="BH", mistakes=(
            gives(lambda: torch.einsum("bxd,xdh->bh", x, W) + b, "scale each slot first: the encoder reads "
                  "s_x · x_x, the normalised activations it was trained on"),
            gives(lambda: torch.einsum("bxd,xdh->bh", x / s[:, None], W) + b, "the scale multiplies the input "
                  "(s_x · x_x), it does not divide it"),
            gives(lambda: expected - b, "add the encoder bias b_enc"),
            gives(lambda: (expected - b) / cc.n_slots + b, "you averaged over the hookpoint slots where the "
                  "encoder sums them"),
        ))
    ex.passed()


def _topk_cases() -> list[tuple[str, torch.Tensor, int]]:
    g = torch.Generator().manual_seed(1)
    return [("random pre-activations", torch.randn(8, 16, generator=g, dtype=F64), 3),
            ("fewer than k·B positive pre-activations", torch.randn(6, 10, generator=g, dtype=F64) - 2.0, 4),
            ("k = H: every positive value is kept", torch.randn(5, 6, generator=g, dtype=F64), 6),
            ("one token (BatchTopK is TopK there)", torch.randn(1, 12, generator=g, dtype=F64), 4)]


def check_batchtopk(fn) -> None:
    """Exercise 1.2: ``fn(pre_BH, k) -> a_BH`` against ``BatchTopK`` in training mode (values and
    the gradient with respect to the pre-activations)."""
    ex = Exercise("1.2", "BatchTopK", fn,
                  "keep the k·B largest values of ReLU(pre) over the WHOLE batch (flatten, topk, scatter back) "
                  "and set every other entry to 0")
    for case, pre, k in _topk_cases():
        pre_ref, H = leaf(pre), pre.shape[1]
        expected = codes_to_dense(BatchTopK(k).train()(pre_ref), H)
        mine = leaf(pre)
        got = ex.call(case, mine, k)
        ex.close(case, "a_BH", got, expected, dims="BH", mistakes=(
            gives(lambda: codes_to_dense(TopK(k)(pre), H), "you kept the k largest of each token (TopK); BatchTopK "
                  "keeps the k·B largest of the whole batch, so a busy token may use more than k features"),
            when(lambda g: bool((g < 0).any()), "negative pre-activations are never kept: select from ReLU(pre), "
                 "so with fewer than k·B positive values the rest stay 0"),
            when(lambda g: int((g != 0).sum()) == k < int((expected != 0).sum()), "keep k·B values in all (k per "
                 "token on average), not k"),
        ))
        ex.gradient(case, got, {"pre_BH": mine}, reference_gradient(expected, {"pre_BH": pre_ref}))
    ex.passed()


def _kept_values(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The values BatchTopK's selection keeps in one batch, zeros included (a mistake model's input)."""
    flat = pre.relu().flatten()
    return flat.topk(min(k * pre.shape[0], flat.numel())).values


def _per_batch(batches: list[torch.Tensor], k: int, stat, positive: bool = True) -> list[float | None]:
    """``stat`` of the (positive) values each batch keeps; None where there are none."""
    kept = [_kept_values(pre, k) for pre in batches]
    kept = [v[v > 0] if positive else v for v in kept]
    return [float(stat(v)) if v.numel() else None for v in kept]


def _ema(values: list[float | None], beta: float, from_zero: bool = False) -> float:
    t, n = 0.0, 0
    for v in values:
        if v is None:
            continue
        b = beta if from_zero else min(beta, n / (n + 1))
        t, n = b * t + (1 - b) * v, n + 1
    return t


def check_threshold_estimate(fn) -> None:
    """Exercise 1.3: ``fn(pre_batches, k, beta) -> threshold`` against the estimate ``BatchTopK`` keeps
    while it trains."""
    ex = Exercise("1.3", "BatchTopK's inference threshold", fn,
                  "per batch, the smallest POSITIVE value BatchTopK keeps (a batch that keeps none is skipped); "
                  "update n = 0, 1, … mixes it in with weight 1 − b_n, b_n = min(β, n/(n+1)): a plain mean at "
                  "first, a moving average with factor β later")
    g = torch.Generator().manual_seed(3)
    few = -torch.rand(6, 8, generator=g, dtype=F64)
    few[0, 0], few[3, 5] = 0.7, 1.1  # fewer than k·B = 18 positive values: the selection keeps zeros too
    cases = [("five batches, β = 0.99 (still a running mean)", [torch.randn(8, 16, generator=g, dtype=F64) * (1 + i)
                                                               for i in range(5)], 3, 0.99),
             ("eight batches, β = 0.5 (a moving average soon)", [torch.randn(6, 12, generator=g, dtype=F64) + 0.1 * i
                                                                 for i in range(8)], 2, 0.5),
             ("a batch with two positive values, and one with none",
              [torch.randn(6, 8, generator=g, dtype=F64), few, -torch.rand(6, 8, generator=g, dtype=F64),
               torch.randn(6, 8, generator=g, dtype=F64)], 3, 0.9)]
    for case, batches, k, beta in cases:
        act = BatchTopK(k, beta=beta).train()
        for pre in batches:
            with torch.enable_grad():  # BatchTopK stages its update in a training forward...
                act(pre)
            act.commit_step()  # ...and the trainer applies it once the step is good
        got = ex.call(case, batches, k, beta)
        minima = _per_batch(batches, k, torch.min)
        ex.close(case, "the threshold", got, float(act.threshold), rtol=1e-6, atol=1e-7, mistakes=(
            gives(lambda: _ema(minima, beta, from_zero=True), "start with a running mean (b_n = min(β, n/(n+1))): a "
                  "moving average started at 0 keeps remembering that arbitrary start"),
            gives(lambda: _ema(_per_batch(batches, k, torch.mean), beta), "the threshold tracks the SMALLEST value "
                  "the selection keeps, not their mean"),
            gives(lambda: _ema(_per_batch(batches, k, torch.min, positive=False), beta), "only positive kept values "
                  "count: with fewer than k·B positive pre-activations the selection also keeps zeros"),
            gives(lambda: _ema([m or 0.0 for m in minima], beta), "a batch that keeps no positive value tells nothing "
                  "about the threshold: skip it"),
            gives(lambda: sum(m for m in minima if m) / len([m for m in minima if m]), "with β = "
                  f"{beta} the estimate becomes a moving average after 1/(1 − β) updates, not a plain mean"),
        ))
    ex.passed()


def check_batchtopk_inference(fn) -> None:
    """Exercise 1.4: ``fn(pre_BH, threshold) -> a_BH`` against ``BatchTopK`` in eval mode."""
    ex = Exercise("1.4", "BatchTopK at inference", fn,
                  "each token keeps its pre-activations strictly above max(threshold, 0), independently of the "
                  "batch; every other entry is 0")
    g = torch.Generator().manual_seed(4)
    at = torch.randn(5, 8, generator=g, dtype=F64)
    at[at.abs() < 0.6] = 0.25  # exactly at the threshold
    cases = [("random pre-activations, threshold 0.5", torch.randn(6, 10, generator=g, dtype=F64), 0.5),
             ("pre-activations exactly at the threshold 0.25", at, 0.25),
             ("a negative threshold (-0.5)", torch.randn(6, 10, generator=g, dtype=F64), -0.5),
             ("one token alone", torch.randn(1, 10, generator=g, dtype=F64), 0.125)]
    for case, pre, threshold in cases:
        act = BatchTopK(1).eval()
        act.threshold.fill_(threshold)
        act.n_threshold_updates.fill_(1)
        expected = codes_to_dense(act(pre), pre.shape[1])
        got = ex.call(case, pre, threshold)
        ex.close(case, "a_BH", got, expected, dims="BH", mistakes=(
            gives(lambda: pre * (pre >= max(threshold, 0.0)), "a pre-activation equal to the threshold is not kept: "
                  "keep pre > threshold"),
            gives(lambda: pre * (pre > threshold), "clamp the threshold at 0: a negative threshold must not keep "
                  "negative pre-activations"),
            gives(lambda: (pre - threshold).clamp_min(0), "keep the pre-activation itself, not its excess over the "
                  "threshold"),
        ))
    ex.passed()


def check_decoder_norm_l1(fn) -> None:
    """Exercise 1.5: ``fn(a_BH, W_dec_HXD, coeff) -> penalty`` against ``ReLU.sparsity_penalty`` with the
    crosscoder's ``decoder_norms_H`` (value and gradient)."""
    ex = Exercise("1.5", "the decoder-norm-weighted L1 penalty", fn,
                  "penalty = coeff · mean over tokens b of Σ_v a[b, v] · Σ_x ‖W_dec[v, x]‖ (one norm per slot, "
                  "summed over slots)")
    for case, n_blocks, B, coeff in (("one block (5 slots)", 1, 6, 1e-3), ("two blocks, a zero decoder row", 2, 4, 0.5),
                                     ("a single token, coefficient 0.01", 1, 1, 1e-2)):
        cc = _crosscoder(n_blocks, 3, 7, seed=10 + B, activation="relu", sparsity_coeff=coeff)
        with torch.no_grad():
            cc.W_dec_HXD[2, 1] = 0.0
        a = torch.randn(B, 7, generator=torch.Generator().manual_seed(B), dtype=F64).relu()
        a_ref, W_ref = leaf(a), cc.W_dec_HXD
        norms = cc.decoder_norms_H()
        # Codes listing every feature (0 where inactive), so the gradient exists at every entry of a_BH.
        every = SparseCodes(torch.arange(7).expand(B, 7), a_ref)
        expected = cc.activation.sparsity_penalty(a_ref, every, norms)
        a_in, W_in = leaf(a), leaf(W_ref)
        got = ex.call(case, a_in, W_in, coeff)
        Wd = W_ref.detach()
        ex.close(case, "the penalty", got, expected, mistakes=(
            gives(lambda: coeff * (a @ Wd.flatten(1).norm(dim=1)).mean(), "one norm per slot, summed: "
                  "Σ_x ‖W_dec[v, x]‖, not the norm of the whole row ‖W_dec[v]‖ over all slots at once"),
            gives(lambda: coeff * (a @ Wd.pow(2).sum((1, 2))).mean(), "weigh by norms, not squared norms"),
            gives(lambda: coeff * a.sum(1).mean(), "weigh each activation by its feature's decoder norms: a plain L1 "
                  "lets the crosscoder shrink a and grow W_dec for free"),
            gives(lambda: expected.detach() * B, "average over the tokens of the batch, do not sum"),
        ))
        ex.gradient(case, got, {"a_BH": a_in, "W_dec_HXD": W_in},
                    reference_gradient(expected, {"a_BH": a_ref, "W_dec_HXD": W_ref}))
    ex.passed()
