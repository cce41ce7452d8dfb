"""Compact-proof pieces (SPEC §3, §4): soundness of every bound, the decomposition, FLOPs, the QK split."""

from __future__ import annotations

import math

import pytest
import torch
from builders import exact_crosscoder, random_tokens, tiny_bridge

from crosscoder_lib.lm import loading
from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.lm.harvest import harvest
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.interactions.bound import soundness
from crosscoder_lib.interactions.decoder import mlp_input_decoder
from crosscoder_lib.interactions.measures import mlp_interaction_bound
from crosscoder_lib.interactions.mlp import MLPWeights, activation, apply_mlp, mlp_weights
from crosscoder_lib.proofs.attention import (
    attention_change_bound,
    attention_output,
    attention_scores,
    attention_weights,
    spectral_norm,
)
from crosscoder_lib.proofs.norms import layer_norm, layer_norm_change_bound
from crosscoder_lib.proofs.layerwise import certified_error_bound
from crosscoder_lib.proofs.length import forward_flops, proof_length
from crosscoder_lib.proofs.qk_split import ln1_decoder, qk_split

N_BLOCKS = 2


# -- (a) on random tensors --------------------------------------------------------------------------

@pytest.mark.parametrize("act_fn", ["gelu_new", "relu"])
def test_mlp_bound_is_sound_and_matches_brute_force(act_fn):
    g = torch.Generator().manual_seed(0)
    L, H, D, N, B, K = 2, 10, 6, 7, 8, 4
    mlp = MLPWeights(torch.randn(L, D, N, generator=g), torch.randn(L, N, generator=g),
                     torch.randn(L, N, D, generator=g), torch.randn(L, D, generator=g), act_fn)
    W_dec, b_dec = torch.randn(L, H, D, generator=g), torch.randn(L, D, generator=g)
    idx = torch.stack([torch.randperm(H, generator=g)[:K] for _ in range(B)])
    val = torch.rand(B, K, generator=g)
    val[0, 1:] = 0  # one feature: no interaction
    val[1] = 0  # no feature
    idx[2] = torch.tensor([0, 1, 2, 3])
    W_dec[:, 1] = 4 * mlp.W_in_LDN.sum(-1)  # feature 1 dominates many neurons
    res = mlp_interaction_bound(SparseCodes(idx, val), W_dec, b_dec, mlp)
    assert res.soundness() == {"mid": 1.0, "lip": 1.0}
    assert torch.all(res.bound_mid_LT <= res.bound_lip_LT * (1 + 1e-12) + 1e-12)
    assert torch.all(res.actual_LT[:, :2] < 1e-10) and torch.all(res.bound_lip_LT[:, :2] == 0)
    # brute force (float64): ε = MLP(n̂2) − g with g letting each neuron see its dominant feature only
    W_dec, b_dec, val, mlp = W_dec.double(), b_dec.double(), val.double(), mlp.to(dtype=torch.float64)
    for l in range(L):
        for t in range(B):
            n2 = (val[t, :, None] * W_dec[l, idx[t]]).sum(0) + b_dec[l]
            beta = b_dec[l] @ mlp.W_in_LDN[l] + mlp.b_in_LN[l]
            g_t = mlp.b_out_LD[l].clone().double()
            for n in range(N):
                ps = [float(val[t, k] * (W_dec[l, idx[t, k]] @ mlp.W_in_LDN[l, :, n])) for k in range(K) if val[t, k] != 0]
                p_dom = max(ps, key=abs) if ps else 0.0
                g_t += float(activation(torch.tensor(p_dom + float(beta[n]), dtype=torch.float64), act_fn)) \
                    * mlp.W_out_LND[l, n].double()
            eps = apply_mlp(n2, mlp, l) - g_t
            assert res.actual_LT[l, t].item() == pytest.approx(eps.norm().item(), rel=1e-5, abs=1e-9)


def test_spectral_norm_is_a_tight_upper_bound():
    g = torch.Generator().manual_seed(3)
    for shape in ((4, 6, 9), (2, 9, 6)):
        W = torch.randn(shape, generator=g, dtype=torch.float64)
        exact = torch.linalg.matrix_norm(W, ord=2)
        assert torch.all(spectral_norm(W) >= exact) and torch.all(spectral_norm(W) <= exact * (1 + 1e-8))


def test_soundness_and_tightness_helpers():
    b, a = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.5, 2.0, 1.0])
    assert soundness(b, a) == pytest.approx(2 / 3)
    assert soundness(b, a, atol=0.6) == 1.0


# -- LayerNorm and attention change bounds on their own -------------------------------------------

def test_layer_norm_change_bound_is_sound():
    g = torch.Generator().manual_seed(1)
    x_hat = torch.randn(500, 16, generator=g, dtype=torch.float64) * torch.rand(500, 1, generator=g, dtype=torch.float64) * 3
    radius = torch.rand(500, generator=g, dtype=torch.float64) * 2
    direction = torch.randn(500, 16, generator=g, dtype=torch.float64)
    x = x_hat + direction / direction.norm(dim=-1, keepdim=True) * radius[:, None]
    bound, lip = layer_norm_change_bound(x_hat, radius, 1e-5)
    actual = (layer_norm(x, 1e-5) - layer_norm(x_hat, 1e-5)).norm(dim=-1)
    assert soundness(bound, actual) == 1.0
    assert torch.all(lip <= 1 / math.sqrt(1e-5) + 1e-6)  # √D/√(r² + D·eps) never exceeds 1/√eps
    # and tight: a small step orthogonal to the centred x̂ and to the all-ones direction moves LN by Lip·step
    c = x_hat - x_hat.mean(-1, keepdim=True)
    u = direction - direction.mean(-1, keepdim=True)
    u = u - (u * c).sum(-1, keepdim=True) / c.pow(2).sum(-1, keepdim=True) * c
    step = torch.full((500,), 1e-6, dtype=torch.float64)
    moved = x_hat + u / u.norm(dim=-1, keepdim=True) * step[:, None]
    actual = (layer_norm(moved, 1e-5) - layer_norm(x_hat, 1e-5)).norm(dim=-1)
    bound, _ = layer_norm_change_bound(x_hat, step, 1e-5)
    assert torch.all(actual / bound > 0.999) and soundness(bound, actual) == 1.0


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    return tiny_bridge(tmp_path_factory.mktemp("proofs") / "m", n_blocks=N_BLOCKS, d_model=32, d_mlp=64,
                       seed=4)


@pytest.fixture(scope="module")
def tokens(bridge):
    return random_tokens(bridge, 3, 10)


def test_reimplemented_attention_is_the_models(bridge, tokens):
    attn = attention_weights(bridge, tokens)
    _, cache = bridge.run_with_cache(tokens)
    for l in range(N_BLOCKS):
        pattern, out = attention_output(cache[f"blocks.{l}.ln1.hook_normalized"].double(), attn, l)
        torch.testing.assert_close(pattern, cache[f"blocks.{l}.attn.hook_pattern"].double(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, cache[f"blocks.{l}.hook_attn_out"].double(), atol=1e-5, rtol=1e-5)


def test_attention_change_bound_is_sound(bridge, tokens):
    attn = attention_weights(bridge, tokens)
    _, cache = bridge.run_with_cache(tokens)
    g = torch.Generator().manual_seed(2)
    for l in range(N_BLOCKS):
        n1 = cache[f"blocks.{l}.ln1.hook_normalized"].double()
        for scale in (1e-3, 0.3, 3.0):
            delta = torch.rand(n1.shape[:2], generator=g, dtype=torch.float64) * scale
            noise = torch.randn(n1.shape, generator=g, dtype=torch.float64)
            n1_pert = n1 + noise / noise.norm(dim=-1, keepdim=True) * delta[..., None]
            actual = (attention_output(n1_pert, attn, l)[1] - attention_output(n1, attn, l)[1]).norm(dim=-1)
            assert soundness(attention_change_bound(n1, delta, attn, l), actual) == 1.0


# -- (b) the whole decomposition --------------------------------------------------------------------

def random_crosscoder(bridge, tokens):
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(N_BLOCKS), d_model=bridge.cfg.d_model, n_features=96,
                           activation="topk", k=6, init_seed=1)
    cc = Crosscoder(cfg)
    cc.set_input_scale(harvest(bridge, tokens, cfg.hookpoints))
    return cc


@pytest.mark.parametrize("mode", ["exact", "interaction_bound"])
def test_certified_bound_is_sound_at_every_hookpoint_logits_and_loss(bridge, tokens, mode):
    cc, mlp = random_crosscoder(bridge, tokens), mlp_weights(bridge)
    r = certified_error_bound(bridge, cc, mlp, tokens, mlp_residual=mode)
    assert set(r.soundness()) == set(r.hookpoints) | {"logits", "loss"}
    assert all(v == 1.0 for v in r.soundness().values()), r.soundness()
    for h in r.hookpoints[1:]:  # the recurrence: bound = propagated + residual
        torch.testing.assert_close(r.bound[h], r.propagated[h] + r.residual[h])
    if mode == "interaction_bound":
        post = r.hookpoints[4]
        torch.testing.assert_close(r.residual[post], r.interaction[post] + r.single_feature[post])
        # the split is an upper bound on the exact residual
        exact = certified_error_bound(bridge, cc, mlp, tokens, mlp_residual="exact").residual[post]
        assert soundness(r.residual[post][:, 1:], exact[:, 1:], atol=1e-6) == 1.0
    assert r.loss_upper >= r.loss_model - 1e-6
    assert r.vacuous == (r.loss_upper >= math.log(r.vocab_size))


def test_exact_crosscoder_gives_near_zero_bounds(bridge, tokens):
    cc, mlp = exact_crosscoder(N_BLOCKS, bridge.cfg.d_model), mlp_weights(bridge)
    r = certified_error_bound(bridge, cc, mlp, tokens)
    for h in r.hookpoints:
        assert r.actual[h][:, 1:].max() < 1e-4
        assert r.bound[h][:, 1:].max() < 1e-2, h
    assert r.loss_explained == pytest.approx(r.loss_model, abs=1e-5)
    assert all(v == 1.0 for v in r.soundness().values())


def test_certified_bound_rejects_other_layouts(bridge, tokens):
    cfg = CrosscoderConfig(hookpoints=["blocks.0.hook_resid_pre"], d_model=bridge.cfg.d_model, n_features=8,
                           activation="topk", k=2)
    with pytest.raises(ValueError, match="paper"):
        certified_error_bound(bridge, Crosscoder(cfg), mlp_weights(bridge), tokens)


@pytest.mark.parametrize("first_block", [0, 1])
def test_certified_bound_over_a_window_of_blocks_is_sound(bridge, tokens, first_block):
    """A crosscoder over one block of the two: after it the error is carried through the model to the logits."""
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(1, first_block=first_block), d_model=bridge.cfg.d_model,
                           n_features=64, activation="topk", k=4, init_seed=3)
    cc = Crosscoder(cfg)
    cc.set_input_scale(harvest(bridge, tokens, cfg.hookpoints))
    for mode in ("exact", "interaction_bound"):
        r = certified_error_bound(bridge, cc, mlp_weights(bridge), tokens, mlp_residual=mode)
        assert r.hookpoints == cfg.hookpoints
        assert r.carried == (("blocks.1.hook_resid_post",) if first_block == 0 else ())
        assert set(r.soundness()) == set(r.hookpoints) | set(r.carried) | {"logits", "loss"}
        assert all(v == 1.0 for v in r.soundness().values()), r.soundness()
        for h in r.carried:  # the model itself after the window: no residual, the bound only propagated
            assert torch.equal(r.bound[h], r.propagated[h]) and float(r.actual[h][:, 1:].min()) > 0


def test_interaction_bound_of_an_mlp_kind_without_one_is_named(bridge, tokens):
    class Fancy(MLPWeights):
        kind = "fancy"

    cc = random_crosscoder(bridge, tokens)
    with pytest.raises(NotImplementedError, match=r"FEATURE_WISE\['fancy'\]"):
        certified_error_bound(bridge, cc, Fancy(*mlp_weights(bridge)), tokens, mlp_residual="interaction_bound")


def test_mlp_bound_agrees_with_the_model_path(bridge, tokens):
    """(a) on a real crosscoder: MLP(n̂2) there is the model's MLP on the decoded MLP input."""
    cc, mlp = random_crosscoder(bridge, tokens), mlp_weights(bridge)
    acts = harvest(bridge, tokens, cc.cfg.hookpoints)
    codes = cc.encode(acts)
    W, b = mlp_input_decoder(cc)
    res = mlp_interaction_bound(codes, W, b, mlp)
    assert res.soundness() == {"mid": 1.0, "lip": 1.0}
    tight = res.tightness()
    assert tight["mid"] >= 1.0 and tight["lip"] >= tight["mid"]


# -- (c) proof length -------------------------------------------------------------------------------

def test_forward_flops_match_torch_flop_counter(bridge):
    from torch.utils.flop_counter import FlopCounterMode

    S = 9
    with FlopCounterMode(display=False) as counter:
        bridge(torch.arange(S)[None] + 2)
    c = bridge.cfg
    assert forward_flops(c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.d_head, c.d_vocab, S) == counter.get_total_flops()


def test_proof_length_shapes_and_crossover():
    geo = dict(n_blocks=4, d_model=768, d_mlp=3072, n_heads=16, d_head=48, vocab=50257, seq=128, n_features=1536, k=20)
    n = torch.tensor([0, 1, 10, 1e3, 1e6], dtype=torch.float64)
    pl = proof_length(n, **geo)
    assert torch.all(pl.brute_force == n * pl.brute_per_input)
    assert torch.all(pl.crosscoder == pl.crosscoder_once + n * pl.crosscoder_per_input)
    assert pl.brute_per_input == forward_flops(4, 768, 3072, 16, 48, 50257, 128)
    assert 0 < pl.crossover < float("inf")
    at = proof_length([pl.crossover], **geo)
    assert at.brute_force.item() == pytest.approx(at.crosscoder.item(), rel=1e-9)


# -- (d) the QK split -------------------------------------------------------------------------------

def test_qk_split_sums_to_the_scores(bridge, tokens):
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(N_BLOCKS), d_model=bridge.cfg.d_model, n_features=40,
                           activation="topk", k=5, train_dec_bias=True, init_seed=2)
    cc = Crosscoder(cfg)
    with torch.no_grad():
        cc.b_dec_XD.normal_()
        cc.input_scale_X.uniform_(0.5, 2)
    attn = attention_weights(bridge, tokens)
    acts = harvest(bridge, tokens[:1], cfg.hookpoints, exclude_first=False)
    with torch.no_grad():
        codes = cc.encode(acts)
    for l in range(N_BLOCKS):
        W_dec_HD, mu = ln1_decoder(cc, l)
        split = qk_split(codes, W_dec_HD, mu, attn, l)
        n1_hat = (codes.val_BK.double()[:, :, None] * W_dec_HD.detach().double()[codes.idx_BK]).sum(1) + mu.double()
        torch.testing.assert_close(n1_hat.float(), cc.decode(codes)[:, 4 * l + 1], rtol=1e-5, atol=1e-5)
        scores = attention_scores(n1_hat[None], attn, l)[0]
        torch.testing.assert_close(split.total(), scores, rtol=1e-9, atol=1e-9)
        assert split.mean_mean.abs().max() > 0 and split.mean_feature.abs().max() > 0
        # feature·feature by an explicit loop over pairs of active features
        t, s, h = 3, 1, 0
        W_Q, W_K = attn.W_Q[l, h], attn.W_K[l, h]
        d = W_dec_HD.detach().double()
        pair = sum(float(codes.val_BK[t, i]) * float(codes.val_BK[s, j])
                   * float((d[codes.idx_BK[t, i]] @ W_Q) @ (d[codes.idx_BK[s, j]] @ W_K))
                   for i in range(codes.idx_BK.shape[1]) for j in range(codes.idx_BK.shape[1]))
        assert split.feature_feature[h, t, s].item() == pytest.approx(attn.scale * pair, rel=1e-9, abs=1e-9)


def test_qk_split_of_an_exact_crosscoder_gives_the_models_pattern(bridge, tokens):
    cc = exact_crosscoder(N_BLOCKS, bridge.cfg.d_model)
    attn = attention_weights(bridge, tokens)
    acts = harvest(bridge, tokens[:1], cc.cfg.hookpoints, exclude_first=False)
    codes = cc.encode(acts)
    _, cache = bridge.run_with_cache(tokens[:1])
    S = tokens.shape[1]
    causal = torch.tril(torch.ones(S, S, dtype=torch.bool))
    W_dec_HD, mu = ln1_decoder(cc, 1)
    split = qk_split(codes, W_dec_HD, mu, attn, 1)
    pattern = split.total().masked_fill(~causal, float("-inf")).softmax(-1)
    torch.testing.assert_close(pattern, cache["blocks.1.attn.hook_pattern"][0].double(), atol=1e-5, rtol=1e-5)


def test_bounds_are_sound_on_the_embedded_model():
    bridge = loading.load_model("embedded:clean")
    tokens = bridge.to_tokens(["Story: Ben found a shiny blue stone in the garden.",
                               "Story: the little bird sang to the sun every day."])
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(bridge.cfg.n_layers), d_model=bridge.cfg.d_model,
                           n_features=256, activation="topk", k=8, init_seed=2)
    cc = Crosscoder(cfg)
    cc.set_input_scale(harvest(bridge, tokens, cfg.hookpoints))
    mlp = mlp_weights(bridge)
    r = certified_error_bound(bridge, cc, mlp, tokens, mlp_residual="interaction_bound")
    assert all(v == 1.0 for v in r.soundness().values()), r.soundness()
    with torch.no_grad():
        codes = cc.encode(harvest(bridge, tokens, cfg.hookpoints))
    W, b = mlp_input_decoder(cc)
    assert mlp_interaction_bound(codes, W, b, mlp).soundness() == {"mid": 1.0, "lip": 1.0}
