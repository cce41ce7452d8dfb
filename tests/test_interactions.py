"""Interactions (SPEC §3, §8): every quantity against a brute-force Python loop on random tensors."""

from __future__ import annotations

import pytest
import torch

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.interactions import kernels
from crosscoder_lib.interactions.decoder import mlp_input_decoder, neuron_bias, neuron_weights
from crosscoder_lib.interactions.measures import (
    dominant_share,
    feature_contributions,
    interaction_matrix,
    interaction_penalty,
    token_interaction_scores,
)
from crosscoder_lib.interactions.mlp import MLPWeights, preactivation

L, H, D, N, K = 3, 12, 6, 5, 4


def random_mlp(n_blocks: int = L, seed: int = 0) -> MLPWeights:
    g = torch.Generator().manual_seed(seed)
    return MLPWeights(
        torch.randn(n_blocks, D, N, generator=g),
        torch.randn(n_blocks, N, generator=g),
        torch.randn(n_blocks, N, D, generator=g),
        torch.randn(n_blocks, D, generator=g),
        "gelu_new",
    )


def random_case(seed: int = 0, n_blocks: int = L):
    """Codes with every awkward case: padding, a token with no feature, a token with one feature,
    a feature that dominates many neurons (shared dominant), and an exact tie."""
    g = torch.Generator().manual_seed(seed)
    mlp = random_mlp(n_blocks, seed)
    W_dec = torch.randn(n_blocks, H, D, generator=g)
    B = 9
    idx = torch.stack([torch.randperm(H, generator=g)[:K] for _ in range(B)])
    val = torch.rand(B, K, generator=g) + 0.1
    val[1] = 0.0  # no active feature
    val[2, 1:] = 0.0  # one active feature
    val[3, 2:] = 0.0  # padding
    # Shared dominant: feature 0 with a large activation and a decoder row aligned with every
    # block's W_in columns reaches all neurons harder than the other features.
    idx[4] = torch.tensor([5, 0, 7, 9])
    val[4] = torch.tensor([0.3, 4.0, 0.5, 0.2])
    W_dec[:, 0] = 3.0 * mlp.W_in_LDN.sum(-1)
    # Exact tie at token 5: two features with identical decoder rows and values.
    idx[5] = torch.tensor([3, 10, 11, 1])
    W_dec[:, 11] = W_dec[:, 10]
    val[5, 1] = val[5, 2] = 0.7
    # Padded slots point anywhere, even at an active feature's id: they must never count.
    idx[3, 2:] = idx[3, 0]
    return SparseCodes(idx, val), W_dec, mlp


def brute_force(codes, W_dec, mlp, weighted: bool = False):
    """Everything of SPEC §3 by explicit loops over (block, token, neuron, active feature)."""
    idx, val = codes.idx_BK.tolist(), codes.val_BK.tolist()
    nL, nH = W_dec.shape[:2]
    B = len(idx)
    G = [[[float(W_dec[l, v] @ mlp.W_in_LDN[l, :, n]) for n in range(N)] for v in range(nH)] for l in range(nL)]
    w = mlp.W_out_LND.norm(dim=-1).tolist()
    share, pen, pen_w = [], [], []
    M = torch.zeros(nL, nH, nH, dtype=torch.float64)
    T = torch.zeros(nL, B, dtype=torch.float64)
    for l in range(nL):
        for t in range(B):
            active = [k for k in range(len(idx[t])) if val[t][k] != 0]
            for n in range(N):
                p = {k: val[t][k] * G[l][idx[t][k]][n] for k in active}
                total = sum(abs(x) for x in p.values())
                if not p:
                    share.append(1.0)
                    pen.append(0.0)
                    pen_w.append(0.0)
                    continue
                top = max(abs(x) for x in p.values())
                dom = min(k for k in active if abs(p[k]) == top)  # lowest slot on ties
                share.append(top / total if total > 0 else 1.0)
                pen.append(total - top)
                pen_w.append(w[l][n] * (total - top))
                T[l, t] += w[l][n] * (total - top)
                for k in active:
                    if k != dom:
                        M[l, idx[t][dom], idx[t][k]] += w[l][n] * abs(p[k])
    M /= B
    mean = lambda xs: sum(xs) / len(xs)
    return {"share": mean(share), "penalty": mean(pen_w if weighted else pen), "M": M, "T": T}


def test_contributions_are_activation_times_G_and_padding_is_zero():
    codes, W_dec, mlp = random_case()
    p_LTNK = feature_contributions(codes, W_dec, mlp)
    assert p_LTNK.shape == (L, codes.idx_BK.shape[0], N, K)
    for l in range(L):
        for t in range(codes.idx_BK.shape[0]):
            for k in range(K):
                v = codes.idx_BK[t, k]
                expected = codes.val_BK[t, k] * (W_dec[l, v] @ mlp.W_in_LDN[l])
                torch.testing.assert_close(p_LTNK[l, t, :, k], expected, rtol=1e-5, atol=1e-5)
    assert torch.all(p_LTNK[:, 1] == 0) and torch.all(p_LTNK[:, 3, :, 2:] == 0)


def test_neuron_weights_formed_as_decoder_times_W_in():
    _, W_dec, mlp = random_case()
    G = neuron_weights(W_dec, mlp)
    for l in range(L):
        torch.testing.assert_close(G[l], W_dec[l] @ mlp.W_in_LDN[l])


@pytest.mark.parametrize("weighted", [False, True])
def test_penalty_and_share_match_brute_force(weighted):
    codes, W_dec, mlp = random_case()
    ref = brute_force(codes, W_dec, mlp, weighted)
    stats = interaction_penalty(codes, W_dec, mlp, form="weighted" if weighted else "unweighted")
    assert stats.penalty.item() == pytest.approx(ref["penalty"], rel=1e-5)
    assert stats.dominant_share.item() == pytest.approx(ref["share"], rel=1e-5)
    assert dominant_share(codes, W_dec, mlp).item() == pytest.approx(ref["share"], rel=1e-5)


def test_matrix_and_token_scores_match_brute_force_with_shared_dominant():
    codes, W_dec, mlp = random_case()
    ref = brute_force(codes, W_dec, mlp)
    M = interaction_matrix(codes, W_dec, mlp)
    torch.testing.assert_close(M.per_block_LHH.double(), ref["M"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(M.total_HH.double(), ref["M"].sum(0), rtol=1e-5, atol=1e-6)
    assert M.n_tokens == codes.idx_BK.shape[0]
    # Feature 0 dominates several neurons at token 4: its row accumulates over all of them.
    p = feature_contributions(codes, W_dec, mlp)[:, 4]  # [L, N, K]
    dominated = p.abs().argmax(-1) == 1  # slot 1 holds feature 0
    assert dominated.sum() > L  # more than one neuron per block on average
    w = mlp.W_out_LND.norm(dim=-1)
    row = sum((w[l, dominated[l]] * p[l, dominated[l], 0].abs()).sum() for l in range(L))
    mine = interaction_matrix(SparseCodes(codes.idx_BK[4:5], codes.val_BK[4:5]), W_dec, mlp).total_HH[0, 5]
    assert mine.item() == pytest.approx(row.item(), rel=1e-5)
    scores = token_interaction_scores(codes, W_dec, mlp)
    torch.testing.assert_close(scores.per_block_LT.double(), ref["T"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.total_T.double(), ref["T"].sum(0), rtol=1e-5, atol=1e-6)
    assert scores.total_T[1] == 0 and scores.total_T[2] == 0  # no feature / one feature: no interaction


def test_share_bounds():
    codes, W_dec, mlp = random_case(seed=3)
    p = feature_contributions(codes, W_dec, mlp).abs()  # [L, T, N, K]
    n_active = (codes.val_BK != 0).sum(1)
    for t in range(codes.idx_BK.shape[0]):
        one = SparseCodes(codes.idx_BK[t:t + 1], codes.val_BK[t:t + 1])
        share = dominant_share(one, W_dec, mlp).item()
        if n_active[t] <= 1:
            assert share == 1.0
        else:
            assert 1 / n_active[t].item() - 1e-6 <= share <= 1.0
            ratio = (p[:, t].amax(-1) / p[:, t].sum(-1)).mean().item()
            assert share == pytest.approx(ratio, rel=1e-5)


def test_chunking_changes_nothing():
    codes, W_dec, mlp = random_case(seed=1)
    a = interaction_penalty(codes, W_dec, mlp, chunk_tokens=1)
    b = interaction_penalty(codes, W_dec, mlp)
    assert a.penalty.item() == pytest.approx(b.penalty.item(), rel=1e-6)
    assert a.dominant_share.item() == pytest.approx(b.dominant_share.item(), rel=1e-6)
    torch.testing.assert_close(interaction_matrix(codes, W_dec, mlp, chunk_tokens=2).total_HH,
                               interaction_matrix(codes, W_dec, mlp).total_HH)
    torch.testing.assert_close(token_interaction_scores(codes, W_dec, mlp, chunk_tokens=3).total_T,
                               token_interaction_scores(codes, W_dec, mlp).total_T)


def test_padded_slots_never_count():
    codes, W_dec, mlp = random_case(seed=2)
    moved = codes.idx_BK.clone()
    pad = codes.val_BK == 0
    moved[pad] = (moved[pad] + 5) % H  # point padded slots elsewhere
    other = SparseCodes(moved, codes.val_BK)
    assert interaction_penalty(other, W_dec, mlp).penalty.item() == pytest.approx(
        interaction_penalty(codes, W_dec, mlp).penalty.item(), rel=1e-6)
    torch.testing.assert_close(interaction_matrix(other, W_dec, mlp).total_HH, interaction_matrix(codes, W_dec, mlp).total_HH)
    # Extra all-padded slots leave everything unchanged too.
    wide = SparseCodes(torch.cat([codes.idx_BK, torch.zeros_like(codes.idx_BK)], 1),
                       torch.cat([codes.val_BK, torch.zeros_like(codes.val_BK)], 1))
    assert dominant_share(wide, W_dec, mlp).item() == pytest.approx(dominant_share(codes, W_dec, mlp).item(), rel=1e-6)


@pytest.mark.parametrize("form", ["unweighted", "weighted"])
def test_penalty_gradient_matches_autograd_of_dense_formula(form):
    codes, W_dec, mlp = random_case(seed=4)
    W = W_dec.clone().requires_grad_(True)
    val = codes.val_BK.clone().requires_grad_(True)
    mine = interaction_penalty(SparseCodes(codes.idx_BK, val), W, mlp, form=form).penalty
    g_mine = torch.autograd.grad(mine, [W, val])
    absp = feature_contributions(SparseCodes(codes.idx_BK, val), W, mlp).abs()  # [L, T, N, K]
    dense = absp.sum(-1) - absp.amax(-1)  # amax splits an exact tie's subgradient evenly, as ours does
    if form == "weighted":
        dense = dense * mlp.W_out_LND.norm(dim=-1)[:, None, :]
    g_ref = torch.autograd.grad(dense.mean(), [W, val])
    for a, b in zip(g_mine, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_penalty_gradient_reaches_every_block_of_a_six_block_model():
    codes, W_dec, mlp = random_case(seed=5, n_blocks=6)
    W = W_dec.clone().requires_grad_(True)
    val = codes.val_BK.clone().requires_grad_(True)
    interaction_penalty(SparseCodes(codes.idx_BK, val), W, mlp).penalty.backward()
    assert W.grad is not None and val.grad is not None
    for l in range(6):
        assert W.grad[l].abs().sum() > 0, f"no gradient reaches block {l}"
    # Each block's own term has its own gradient: the last block's matches its one-block penalty.
    W5 = W_dec[5:].clone().requires_grad_(True)
    one = MLPWeights(*(t[5:] for t in mlp[:4]), act_fn=mlp.act_fn)
    (interaction_penalty(codes, W5, one).penalty / 6).backward()
    torch.testing.assert_close(W.grad[5], W5.grad[0], rtol=1e-4, atol=1e-7)


def test_preactivation_is_sum_of_contributions_plus_bias():
    """SPEC §8: Σ_v p[t,n,v] + β[n] equals the reconstructed MLP input times W_in plus b_in."""
    torch.manual_seed(0)
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(L), d_model=D, n_features=H, activation="topk", k=3,
                           train_dec_bias=True)
    cc = Crosscoder(cfg)
    with torch.no_grad():
        cc.b_dec_XD.normal_()
        cc.input_scale_X.uniform_(0.5, 2.0)  # unfolded scale: units must still come out right
    x = torch.randn(10, cfg.n_slots, D)
    codes = cc.encode(x)
    recon = cc.decode(codes)
    mlp = random_mlp()
    W_dec_LHD, b_dec_LD = mlp_input_decoder(cc)
    p = feature_contributions(codes, W_dec_LHD, mlp)  # [L, T, N, K]
    beta = neuron_bias(b_dec_LD, mlp)
    for l in range(L):
        z = preactivation(recon[:, 4 * l + 3], mlp, l)
        torch.testing.assert_close(p[l].sum(-1) + beta[l], z, rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_named():
    codes, W_dec, mlp = random_case()
    with pytest.raises(ValueError, match="W_dec_LHD"):
        interaction_penalty(codes, W_dec[:, :, :-1], mlp)
    with pytest.raises(ValueError, match="form"):
        interaction_penalty(codes, W_dec, mlp, form="squared")
    dup = codes.idx_BK.clone()
    dup[0, 1] = dup[0, 0]
    with pytest.raises(ValueError, match="twice"):
        interaction_matrix(SparseCodes(dup, codes.val_BK), W_dec, mlp)
    out = codes.idx_BK.clone()
    out[0, 0] = H
    with pytest.raises(ValueError, match="feature id"):
        dominant_share(SparseCodes(out, codes.val_BK), W_dec, mlp)
    with pytest.raises(TypeError, match="idx_BK"):
        token_interaction_scores(codes.val_BK, W_dec, mlp)
    torch.testing.assert_close(token_interaction_scores((codes.idx_BK, codes.val_BK), W_dec, mlp),
                               token_interaction_scores(codes, W_dec, mlp))


def ragged_case():
    """BatchTopK-style ragged codes (some tokens empty) with an exact tie and a feature whose G row is 0."""
    g = torch.Generator().manual_seed(7)
    mlp = random_mlp(4, seed=7)
    W_dec = torch.randn(4, 40, D, generator=g)
    B = 33
    idx = torch.stack([torch.randperm(40, generator=g)[:9] for _ in range(B)])
    val = torch.rand(B, 9, generator=g) * (torch.rand(B, 9, generator=g) < 0.6)  # ragged L0, some empty
    W_dec[:, 21] = W_dec[:, 20]
    idx[0, :2] = torch.tensor([20, 21])
    val[0, :2] = 0.5  # an exact tie
    W_dec[:, 30] = 0.0  # a feature whose G row is exactly 0: sign(G) = 0, so no gradient reaches it
    assert ((idx == 30) & (val > 0)).any()
    return idx, val, W_dec, mlp


def penalty_run(idx, val, W_dec, mlp, form, backend, threads=1):
    """Penalty, share and gradients (W_dec, val) under ``backend`` with ``threads`` kernel threads."""
    W = W_dec.clone().requires_grad_(True)
    v = val.clone().requires_grad_(True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the kernel splits neurons into one column range per thread
    try:
        with kernels.use_backend(backend):
            stats = interaction_penalty(SparseCodes(idx, v), W, mlp, form=form)
        stats.penalty.backward()
    finally:
        torch.set_num_threads(before)
    return stats.penalty.item(), stats.dominant_share.item(), W.grad, v.grad


def skip_without_c(backend):
    if backend == "c" and kernels.kernel_status().backend != "c":
        pytest.skip(f"no fused C kernel here ({kernels.kernel_status().reason}): only the PyTorch path exists")


@pytest.mark.parametrize("backend", ["c", "torch"])
@pytest.mark.parametrize("form", ["unweighted", "weighted"])
def test_each_backend_matches_the_dense_formula_on_ragged_codes(form, backend):
    """Each backend gives the dense formula's penalty, share and gradients, BatchTopK-style ragged
    codes and exact ties included, with one thread and with three."""
    skip_without_c(backend)
    idx, val, W_dec, mlp = ragged_case()
    W = W_dec.clone().requires_grad_(True)
    v = val.clone().requires_grad_(True)
    absp = feature_contributions(SparseCodes(idx, v), W, mlp).abs()  # [L, T, N, K]
    dense = absp.sum(-1) - absp.amax(-1)  # amax splits an exact tie's subgradient evenly, as ours does
    if form == "weighted":
        dense = dense * mlp.W_out_LND.norm(dim=-1)[:, None, :]
    ref = dense.mean()
    ref.backward()
    share = torch.where(absp.sum(-1) > 0, absp.amax(-1) / absp.sum(-1), 1.0).mean().item()
    for threads in (1, 3):
        p, s, gW, gv = penalty_run(idx, val, W_dec, mlp, form, backend, threads)
        assert p == pytest.approx(ref.item(), rel=1e-5) and s == pytest.approx(share, rel=1e-6)
        torch.testing.assert_close(gW, W.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gv, v.grad, rtol=1e-4, atol=1e-6)
        assert torch.all(gW[:, 30] == 0)


@pytest.mark.parametrize("form", ["unweighted", "weighted"])
def test_fused_kernel_and_pytorch_paths_agree(form):
    """The fast path (fused C kernel) and the fallback (chunked PyTorch) give the same penalty,
    share and gradients, BatchTopK-style ragged codes and exact ties included."""
    skip_without_c("c")
    case = ragged_case()
    fast = penalty_run(*case, form, "c")
    fast3 = penalty_run(*case, form, "c", threads=3)
    slow = penalty_run(*case, form, "torch")
    for f in (fast, fast3):
        assert f[0] == pytest.approx(slow[0], rel=1e-5) and f[1] == pytest.approx(slow[1], rel=1e-6)
        torch.testing.assert_close(f[2], slow[2], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(f[3], slow[3], rtol=1e-4, atol=1e-6)
        assert torch.all(f[2][:, 30] == 0)


def test_preactivation_invariant_on_the_embedded_model():
    """SPEC §8 on embedded:clean: Σ_v p + β equals the decoded MLP input times W_in plus b_in."""
    from crosscoder_lib.interactions.mlp import mlp_weights
    from crosscoder_lib.lm import loading
    from crosscoder_lib.lm.harvest import harvest

    bridge = loading.load_model("embedded:clean")
    tokens = bridge.to_tokens(["Story: Tom saw a big green frog near the river.",
                               "Story: Mia baked bread for her grandma."])
    L_emb = bridge.cfg.n_layers
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(L_emb), d_model=bridge.cfg.d_model, n_features=256,
                           activation="topk", k=8, init_seed=1)
    cc = Crosscoder(cfg)
    acts = harvest(bridge, tokens, cfg.hookpoints)
    cc.set_input_scale(acts)  # not folded: units must still come out right
    mlp = mlp_weights(bridge)
    with torch.no_grad():
        codes = cc.encode(acts)
        recon = cc.decode(codes)
        W_dec_LHD, b_dec_LD = mlp_input_decoder(cc)
        p = feature_contributions(codes, W_dec_LHD, mlp)
        beta = neuron_bias(b_dec_LD, mlp)
    for l in range(L_emb):
        z = preactivation(recon[:, 4 * l + 3], mlp, l)
        torch.testing.assert_close(p[l].sum(-1) + beta[l], z, rtol=1e-4, atol=1e-4)
