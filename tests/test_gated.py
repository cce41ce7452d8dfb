"""Feature interactions in gated MLPs: every quantity against the float64 brute-force reference
(tests/gated_reference.py: loops over blocks, tokens, neurons and slots), to 1e-10 relative.

The float32 kernel backend is checked against the same reference at float32 precision and against
the PyTorch backend. With ``W_up = 0`` and ``b_up = 1`` the gated kind is the standard one: every
quantity the two kinds share then equals the standard kind's, to the bit.
"""

from __future__ import annotations

import math

import gated_reference as gr
import pytest
import torch
from test_interactions import skip_without_c

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.interactions import kernels
from crosscoder_lib.interactions.ablation import ALL_SCHEMES, scheme_resid_post
from crosscoder_lib.interactions.activation import (
    activation,
    activation_argmin,
    activation_range,
    bounded_by_identity,
    lipschitz,
)
from crosscoder_lib.interactions.bound import FORMS, spectral_norm
from crosscoder_lib.interactions.decoder import mlp_input_decoder
from crosscoder_lib.interactions.engine import make_plan, passes
from crosscoder_lib.interactions.measures import interaction_matrix, interaction_penalty
from crosscoder_lib.interactions.mlp import GatedContributions, GatedMLPWeights, MLPWeights, apply_mlp
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.lm.hookpoints import paper_hookpoints

F64 = torch.float64
RTOL = 1e-10
ACTS = ("silu", "gelu", "gelu_new", "relu", "linear")


def problem(seed, L=2, H=12, D=6, N=8, T=6, K=4, act="silu", biases=True, scale=1.0):
    """Random gated MLP and codes with a token of one feature, a token of none, a padded slot before
    active ones and a reversed slot order; the reference's weights and the library's."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)
    bias = lambda *s: r(*s) if biases else torch.zeros(*s, dtype=F64)
    ref = gr.GatedMLP(r(L, D, N), bias(L, N), r(L, D, N), bias(L, N), r(L, N, D), bias(L, D), act)
    W_dec, b_dec = r(L, H, D) / math.sqrt(D), bias(L, D)
    idx = torch.stack([torch.randperm(H, generator=g)[:K] for _ in range(T)])
    val = scale * torch.rand(T, K, generator=g, dtype=F64) * 2
    val[0, 1:] = 0  # one active feature
    val[1] = 0  # no active feature
    if T > 3:
        val[2, 0] = 0  # a padded slot before active ones
        idx[3] = idx[3].flip(0)
    return idx, val, W_dec, b_dec, ref, library(ref)


def library(ref: gr.GatedMLP) -> GatedMLPWeights:
    return GatedMLPWeights(*ref[:6], act_fn=ref.act_fn)


def magnitude(idx, val, W_dec, b_dec, ref):
    """Per (l, t) scale of the MLP output, for round-off tolerances (MLP(û) from û, g from the p's)."""
    p_g, p_u, _ = gr.contributions(idx, val, W_dec, ref)
    bg, bu = gr.biases(b_dec, ref)
    AB = (p_g.abs().sum(-1) + bg[:, None].abs()) * (p_u.abs().sum(-1) + bu[:, None].abs())
    return torch.einsum("ltn,ln->lt", AB, ref.w_LN()) + ref.b_down_LD.norm(dim=-1)[:, None]


def two_equal_features(act, sign):
    """Features 3 and 7 have equal |p_g| and |p_u| at every neuron (d_7 = sign·d_3, same activation)."""
    idx, val, W_dec, b_dec, ref, lib = problem(7, T=3, K=3, act=act, biases=False)
    W_dec[:, 7] = sign * W_dec[:, 3]
    idx[:] = torch.tensor([3, 7, 1])
    val[:] = torch.tensor([[1.5, 1.5, 0.0], [1.5, 1.5, 0.2], [40.0, 40.0, 0.0]], dtype=F64)
    return idx, val, W_dec, b_dec, ref, lib


def close(actual, expected, atol=0.0):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=atol)


# -- the activation's facts -------------------------------------------------------------------


def test_activation_constants_match_their_closed_forms():
    sig = lambda x: 1 / (1 + math.exp(-x))
    a, b = 2.0, 3.0  # SiLU' is maximal where SiLU'' = s(1 − s)(2 + x(1 − 2s)) = 0
    for _ in range(200):
        m = (a + b) / 2
        a, b = (m, b) if 2 + m * (1 - 2 * sig(m)) > 0 else (a, m)
    silu_lip = sig(a) * (1 + a * (1 - sig(a)))
    assert silu_lip <= lipschitz("silu") <= silu_lip * (1 + 1e-8)
    for name, xs in (("silu", -1.278465), ("gelu", -0.751792), ("gelu_new", -0.752461)):
        assert activation_argmin(name) == pytest.approx(gr.act_argmin(name), abs=1e-9)
        assert activation_argmin(name) == pytest.approx(xs, abs=1e-6)
    assert activation_argmin("relu") is None and activation_argmin("linear") is None
    for name in ("silu", "gelu", "gelu_new", "relu", "linear", "tanh"):
        assert bounded_by_identity(name), name
    assert not bounded_by_identity("sigmoid")  # σ(0) = 1/2: the gated bound then uses its other form only


@pytest.mark.parametrize("name", ACTS)
def test_activation_range_on_intervals(name):
    g = torch.Generator().manual_seed(1)
    centre, width = torch.randn(200, generator=g, dtype=F64) * 3, torch.rand(200, generator=g, dtype=F64) * 4
    low, high = activation_range(centre - width, centre + width, name)
    for c, w, m, M in zip(centre.tolist(), width.tolist(), low.tolist(), high.tolist()):
        y = activation(torch.linspace(c - w, c + w, 20_001, dtype=F64), name)
        assert m <= y.min() + 1e-15 and y.max() <= M + 1e-15  # contains the range
        assert y.min() <= m + 1e-6 and M <= y.max() + 1e-15  # and is attained (up to the grid)
        assert (m, M) == pytest.approx(gr.act_range(c - w, c + w, name), rel=1e-12, abs=1e-15)


def test_spectral_norm_is_rounded_up():
    W = torch.randn(3, 40, 17, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = torch.linalg.svdvals(W)[:, 0]
    assert torch.all(spectral_norm(W) >= exact) and torch.all(spectral_norm(W) <= exact * (1 + 2e-9))


# -- contributions, dominant feature, share, penalty ------------------------------------------


def test_contributions_are_both_branches_and_sum_to_the_reconstruction():
    for seed in range(3):
        idx, val, W_dec, b_dec, ref, lib = problem(seed)
        p = MLPInteractions(W_dec, lib, b_dec).contributions((idx, val))
        assert isinstance(p, GatedContributions)
        p_g, p_u, _ = gr.contributions(idx, val, W_dec, ref)
        close(p.gate_LTNK, p_g, atol=1e-14)
        close(p.up_LTNK, p_u, atol=1e-14)
        pad = (val == 0)[None, :, None, :].expand_as(p_g)
        assert torch.all(p.gate_LTNK[pad] == 0) and torch.all(p.up_LTNK[pad] == 0)
        inter = MLPInteractions(W_dec, lib, b_dec)
        for l in range(ref.n_blocks):  # SPEC §8: Σ_v p + β is the reconstruction times the weights
            u = gr.reconstruct(idx, val, W_dec, b_dec, l)
            z_g, z_u = lib.preactivations(u, l)
            close(p.gate_LTNK[l].sum(-1) + inter.beta[0][l], z_g, atol=1e-13)
            close(p.up_LTNK[l].sum(-1) + inter.beta[1][l], z_u, atol=1e-13)
            close(apply_mlp(u, lib, l), torch.stack([ref.apply(x, l) for x in u]), atol=1e-13)


def _library_dominant_features(inter, idx, val) -> torch.Tensor:
    """``[L, T, N]`` feature id the engine's passes find dominant (−1 for tokens without a feature)."""
    active = inter.read((idx, val))
    plan = make_plan(active.idx_BK, active.val_BK.abs(), inter.absG_LHN.shape[2], 2)
    out = torch.full((inter.absG_LHN.shape[0], idx.shape[0], inter.absG_LHN.shape[2]), -1, dtype=torch.long)
    for c in passes(plan, inter.absG_LHN, dominant=True):
        out[c.block, c.tokens] = c.idx_cK.gather(1, c.dominant_cN)
    out[:, (val == 0).all(1)] = -1
    return out


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_dominant_feature_is_the_largest_c_lowest_slot_on_ties(sign):
    for idx, val, W_dec, b_dec, ref, lib in (problem(0), problem(1, act="gelu"), two_equal_features("silu", sign)):
        inter = MLPInteractions(W_dec, lib, b_dec)
        slots = gr.dominant_slots(idx, val, W_dec, ref)
        expected = idx[torch.arange(idx.shape[0])[None, :, None], slots]
        expected[:, (val == 0).all(1)] = -1
        assert torch.equal(_library_dominant_features(inter, idx, val), expected)
    assert torch.all(expected[:, [0, 2]] == 3)  # the tie between features 3 and 7 goes to slot 0


def test_dominant_share_matches_the_reference():
    for idx, val, W_dec, b_dec, ref, lib in (problem(2), problem(3, act="gelu_new"), two_equal_features("silu", -1.0)):
        share = MLPInteractions(W_dec, lib).dominant_share((idx, val))
        assert float(share) == pytest.approx(gr.dominant_share(idx, val, W_dec, ref), rel=RTOL)
    one = MLPInteractions(W_dec, lib).dominant_share((idx[:1], val[:1]))
    assert float(one) == pytest.approx(0.5, rel=RTOL)  # two equal features: share 1/2 at every neuron


@pytest.mark.parametrize("form", ["unweighted", "weighted"])
def test_penalty_and_its_gradients_match_the_reference(form):
    idx, val, W_dec, b_dec, ref, lib = problem(31, L=3, T=5, K=3, N=5, D=4, H=8)  # any number of blocks
    val[4, 1] = -0.7  # a negative activation, to check sign(val)
    v_ref, W_ref = val.clone().requires_grad_(True), W_dec.clone().requires_grad_(True)
    P = gr.penalty(idx, v_ref, W_ref, ref, form)
    gv_ref, gW_ref = torch.autograd.grad(P, (v_ref, W_ref))
    v, W = val.clone().requires_grad_(True), W_dec.clone().requires_grad_(True)
    stats = interaction_penalty(SparseCodes(idx, v), W, lib, form=form)  # float64: the PyTorch path
    stats.penalty.backward()
    assert float(stats.penalty.detach()) == pytest.approx(float(P.detach()), rel=RTOL) and float(P.detach()) > 0
    assert float(stats.dominant_share) == pytest.approx(gr.dominant_share(idx, val, W_dec, ref), rel=RTOL)
    close(v.grad, gv_ref, atol=1e-15)
    close(W.grad, gW_ref, atol=1e-15)
    assert torch.all(v.grad[val == 0] == 0) and W.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["c", "torch"])
@pytest.mark.parametrize("form", ["unweighted", "weighted"])
def test_float32_backends_match_the_reference(form, backend):
    """The fused C kernel (float32 CPU only) and the PyTorch path in float32: the reference's value,
    share and gradients at float32 precision, and the two backends agree."""
    skip_without_c(backend)
    idx, val, W_dec, b_dec, ref, lib = two_equal_features("silu", -1.0)
    v_ref, W_ref = val.clone().requires_grad_(True), W_dec.clone().requires_grad_(True)
    P = gr.penalty(idx, v_ref, W_ref, ref, form)
    gv_ref, gW_ref = torch.autograd.grad(P, (v_ref, W_ref))
    runs = []
    for name in (backend, "torch"):
        v, W = val.float().requires_grad_(True), W_dec.float().requires_grad_(True)
        with kernels.use_backend(name):
            stats = interaction_penalty(SparseCodes(idx, v), W, lib.to(dtype=torch.float32), form=form)
        stats.penalty.backward()
        runs.append((float(stats.penalty.detach()), float(stats.dominant_share), v.grad, W.grad))
    for p, share, gv, gW in runs:
        assert p == pytest.approx(float(P.detach()), rel=1e-5)
        assert share == pytest.approx(gr.dominant_share(idx, val, W_dec, ref), rel=1e-6)
        torch.testing.assert_close(gv.double(), gv_ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gW.double(), gW_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(runs[0][2], runs[1][2], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(runs[0][3], runs[1][3], rtol=1e-5, atol=1e-7)


# -- matrix and token scores ------------------------------------------------------------------


def shared_dominant_problem():
    """Feature idx[t, 0] dominates every neuron of every token."""
    idx, val, W_dec, b_dec, ref, lib = problem(11, T=4, K=3)
    val[:, 0] = 50.0
    val[1, 1:] = torch.tensor([0.3, 0.2], dtype=F64)
    val[0, 1:] = torch.tensor([0.4, 0.1], dtype=F64)
    return idx, val, W_dec, b_dec, ref, lib


def test_matrix_and_scores_use_certified_weights_and_accumulate_over_neurons():
    shared = shared_dominant_problem()
    assert torch.all(gr.dominant_slots(*shared[:3], shared[4]) == 0)  # every neuron shares one dominant feature
    for idx, val, W_dec, b_dec, ref, lib in (shared, problem(12), problem(13, act="gelu")):
        inter = MLPInteractions(W_dec, lib, b_dec)
        Lip = lib.lipschitz
        M, T = inter.matrix((idx, val)), inter.token_scores((idx, val))
        M_ref, T_ref = gr.interaction_matrix(idx, val, W_dec, b_dec, ref, 12), gr.token_scores(idx, val, W_dec, b_dec, ref)
        close(Lip * M.per_block_LHH, M_ref, atol=1e-14)
        close(Lip * M.total_HH, M_ref.sum(0), atol=1e-14)
        close(Lip * T.per_block_LT, T_ref, atol=1e-14)
        close(T.total_T, T.per_block_LT.sum(0))
        close(M.per_block_LHH.sum((1, 2)), T.per_block_LT.mean(1), atol=1e-14)  # M splits T over pairs
        assert M.n_tokens == idx.shape[0] and M_ref.abs().sum() > 0
    assert torch.all(T.per_block_LT[:, :2] == 0)  # one feature, no feature: no interaction
    with pytest.raises(ValueError, match="b_dec_LD"):
        interaction_matrix((idx, val), W_dec, lib)  # the certified weights read the bias


def test_certified_score_is_the_bound_lipC_and_is_sound():
    for seed in range(3):
        idx, val, W_dec, b_dec, ref, lib = problem(500 + seed, act=("silu", "gelu", "linear")[seed])
        inter = MLPInteractions(W_dec, lib, b_dec)
        res = gr.explanation_and_bounds(idx, val, W_dec, b_dec, ref, spectral_norm(ref.W_down_LND))
        score = lib.lipschitz * inter.token_scores((idx, val)).per_block_LT
        close(score, res.bounds["lipC"], atol=1e-14)
        assert torch.all(score >= res.bounds["lip"] * (1 - 1e-12)) and torch.all(score + 1e-12 >= res.actual_LT)


# -- the feature-wise explanation and every bound ----------------------------------------------


def check_against_reference(idx, val, W_dec, b_dec, ref, lib):
    inter = MLPInteractions(W_dec, lib, b_dec)
    res = gr.explanation_and_bounds(idx, val, W_dec, b_dec, ref, spectral_norm(ref.W_down_LND))
    tol = 1e-12 * magnitude(idx, val, W_dec, b_dec, ref)
    bound = inter.bound((idx, val), chunk_tokens=4)
    fw = inter.feature_wise((idx, val), chunk_tokens=4)
    for l in range(ref.n_blocks):
        close(fw[l].mlp_out_TD, res.mlp_out_LTD[l], atol=float(tol[l].max()))
        close(fw[l].g_TD, res.g_LTD[l], atol=float(tol[l].max()))
    torch.testing.assert_close(bound.actual_LT, res.actual_LT, rtol=RTOL, atol=float(tol.max()))
    for form, b in bound.forms().items():
        torch.testing.assert_close(b, res.bounds[form], rtol=RTOL, atol=float(tol.max()), msg=form)
        assert torch.all(b + tol >= bound.actual_LT), form  # sound on every token
    assert bound.soundness(atol=float(tol.max()), forms=FORMS) == {f: 1.0 for f in FORMS}
    f = bound.forms()
    assert torch.all(f["mid"] <= f["box"] + tol) and torch.all(f["box"] <= f["lip"] + tol)
    return bound


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("biases", [True, False])
def test_explanation_error_and_every_bound_match_the_reference(act, biases):
    for seed in range(2):
        idx, val, W_dec, b_dec, ref, lib = problem(100 + seed, act=act, biases=biases)
        bound = check_against_reference(idx, val, W_dec, b_dec, ref, lib)
        for form, b in bound.forms().items():  # one feature, no feature: no interaction
            assert torch.all(b[:, :2] == 0), form
        assert torch.all(bound.actual_LT[:, :2] == 0)


@pytest.mark.parametrize("act", ["silu", "gelu", "linear"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_adversarial_ties_cancellation_and_saturated_gates(act, sign):
    """Exact ties (sign +1) and exact cancellation (−1: z = β while g sees the full p_i), huge
    activations, and a gate closed by its bias (where the second triangle form is the tight one)."""
    check_against_reference(*two_equal_features(act, sign))
    check_against_reference(*problem(200, act=act, scale=1e4))
    idx, val, W_dec, b_dec, ref, _ = problem(5, act=act)
    ref = ref._replace(b_gate_LN=ref.b_gate_LN - 30.0)
    check_against_reference(idx, val, W_dec, b_dec, ref, library(ref))


@pytest.mark.parametrize("act", ["silu", "gelu_new"])
def test_every_form_is_sound_on_many_larger_problems(act):
    for seed in range(30):
        scale = (1.0, 10.0, 1e3)[seed % 3]
        idx, val, W_dec, b_dec, ref, lib = problem(1000 + seed, 1, 64, 16, 32, 50, 8, act, seed % 2 == 1, scale)
        inter = MLPInteractions(W_dec, lib, b_dec)
        bound = inter.bound((idx, val), chunk_tokens=16)
        mag = (1 + bound.actual_LT) * 1e-10 * scale ** 2
        for form, b in bound.forms().items():
            assert torch.all(b + mag >= bound.actual_LT), (seed, form)
        assert torch.all(lib.lipschitz * inter.token_scores((idx, val)).per_block_LT + mag >= bound.actual_LT)


def test_a_sigmoid_gate_has_sound_bounds_and_scores_without_the_identity_bound():
    """σ = sigmoid breaks ``|σ(x)| ≤ |x|`` (σ(0) = 1/2): the bound keeps its second triangle form
    only and the certified scores use ``|σ(a)| ≤ |σ(0)| + Lip Ā``; both stay sound on every token,
    small activations included (where σ(a) ≈ 1/2 dwarfs every contribution)."""
    for seed, scale in ((0, 1e-3), (1, 1.0), (2, 30.0)):
        idx, val, W_dec, b_dec, ref, _ = problem(300 + seed, 1, 32, 8, 16, 40, 6, "silu", seed != 0, scale)
        lib = library(ref)._replace(act_fn="sigmoid")
        inter = MLPInteractions(W_dec, lib, b_dec)
        bound = inter.bound((idx, val))
        tol = 1e-12 * (1 + bound.actual_LT)
        for form, b in bound.forms().items():
            assert torch.all(b + tol >= bound.actual_LT), (seed, form)
        score = lib.lipschitz * inter.token_scores((idx, val)).per_block_LT
        assert torch.all(score + tol >= bound.bound_lip_LT) and bound.actual_LT.max() > 0


# -- the reduction to the standard kind --------------------------------------------------------


def as_gated(mlp: MLPWeights) -> GatedMLPWeights:
    """The standard MLP as a gated one whose up branch is the constant 1 (``W_up = 0``, ``b_up = 1``)."""
    return GatedMLPWeights(mlp.W_in_LDN, mlp.b_in_LN, torch.zeros_like(mlp.W_in_LDN), torch.ones_like(mlp.b_in_LN),
                           mlp.W_out_LND, mlp.b_out_LD, mlp.act_fn)


def plain_problem(seed, dtype=F64):
    idx, val, W_dec, b_dec, ref, _ = problem(seed, act="gelu_new")
    dense = MLPWeights(ref.W_gate_LDN, ref.b_gate_LN, ref.W_down_LND, ref.b_down_LD, "gelu_new").to(dtype=dtype)
    return idx, val.to(dtype), W_dec.to(dtype), b_dec.to(dtype), dense


@pytest.mark.parametrize("dtype,backend", [(F64, "torch"), (torch.float32, "torch"), (torch.float32, "c")])
def test_gated_with_a_constant_up_branch_is_the_standard_kind_to_the_bit(dtype, backend):
    skip_without_c(backend)
    idx, val, W_dec, b_dec, dense = plain_problem(21, dtype)
    a, b = MLPInteractions(W_dec, dense, b_dec), MLPInteractions(W_dec, as_gated(dense), b_dec)
    codes = (idx, val)
    assert torch.equal(a.dominant_share(codes), b.dominant_share(codes))
    for x, y in zip(a.matrix(codes), b.matrix(codes)):
        assert torch.equal(torch.as_tensor(x), torch.as_tensor(y))
    for x, y in zip(a.token_scores(codes), b.token_scores(codes)):
        assert torch.equal(x, y)
    with torch.no_grad():
        assert torch.equal(a.contributions(codes), b.contributions(codes).gate_LTNK)
    for form in ("unweighted", "weighted"):
        grads = []
        for mlp in (dense, as_gated(dense)):
            v, W = val.clone().requires_grad_(True), W_dec.clone().requires_grad_(True)
            with kernels.use_backend(backend):
                stats = interaction_penalty(SparseCodes(idx, v), W, mlp, form=form)
            stats.penalty.backward()
            grads.append((stats.penalty.detach(), stats.dominant_share, v.grad, W.grad))
        for x, y in zip(*grads):
            assert torch.equal(x, y)
    ba, bb = a.bound(codes), b.bound(codes)
    for field in ("actual_LT", "bound_mid_LT", "bound_box_LT", "bound_mid_l2_LT", "bound_box_l2_LT"):
        assert torch.equal(getattr(ba, field), getattr(bb, field)), field
    for field in ("bound_lip_LT", "bound_lip_l2_LT"):  # Lip multiplies before the neuron sum there
        torch.testing.assert_close(getattr(ba, field), getattr(bb, field), rtol=1e-12, atol=0)


# -- ablation -------------------------------------------------------------------------------


def gated_crosscoder(L, D, H, seed):
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(L), d_model=D, n_features=H, activation="topk", k=4,
                           train_dec_bias=True, init_seed=seed)
    cc = Crosscoder(cfg).double()
    with torch.no_grad():
        cc.W_dec_HXD.mul_(5.0)
        cc.b_dec_XD.normal_(generator=torch.Generator().manual_seed(seed))
        cc.input_scale_X.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(seed + 1))  # not folded
    return cc


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_ablation_schemes_match_the_reference(act):
    """Each scheme keeps, per (t, n), the features ranked by c, the same ones in both branches."""
    _, _, _, _, ref, lib = problem(40, L=2, D=6, N=8, act=act)
    cc = gated_crosscoder(2, 6, 12, seed=3)
    codes = cc.encode(torch.randn(7, cc.n_slots, 6, generator=torch.Generator().manual_seed(4), dtype=F64))
    recon = cc.decode(codes)
    W_dec, b_dec = (t.detach() for t in mlp_input_decoder(cc))
    inter = MLPInteractions.of(cc, lib)
    for l in range(2):
        out = scheme_resid_post(codes, inter, l, ALL_SCHEMES, torch.Generator().manual_seed(9), chunk_tokens=64)
        u = torch.rand(7, 8, generator=torch.Generator().manual_seed(9))  # drop_random's one draw (float32)
        mid = recon[:, 4 * l + 2].detach()
        for s in ALL_SCHEMES:
            expected = mid + gr.ablated_outputs(codes.idx_BK, codes.val_BK.detach(), W_dec, b_dec, ref, l, s, u)
            torch.testing.assert_close(out[s], expected, rtol=RTOL, atol=1e-11, msg=s)
        torch.testing.assert_close(out["none"], mid + apply_mlp(recon[:, 4 * l + 3].detach(), lib, l),
                                   rtol=1e-9, atol=1e-10)  # 'none' is the MLP on the reconstruction
        assert not torch.equal(out["keep_largest"], out["none"]) and not torch.equal(out["drop_random"], out["none"])


def test_ablation_of_a_constant_up_branch_is_the_standard_ablation_to_the_bit():
    cc = gated_crosscoder(2, 6, 12, seed=5).float()
    dense = plain_problem(22, torch.float32)[4]
    codes = cc.encode(torch.randn(9, cc.n_slots, 6, generator=torch.Generator().manual_seed(6)))
    outs = [scheme_resid_post(codes, MLPInteractions.of(cc, mlp), 1, ALL_SCHEMES, torch.Generator().manual_seed(2),
                              chunk_tokens=4) for mlp in (dense, as_gated(dense))]
    for s in ALL_SCHEMES:
        assert torch.equal(outs[0][s], outs[1][s]), s
