"""Ablation fidelity (Fig. 2, SPEC §5, §8): scheme masks vs brute force, Φ by definition, seeding."""

from __future__ import annotations

import pytest
import torch
from builders import exact_crosscoder, random_tokens, tiny_bridge

from crosscoder_lib.interactions.ablation import (
    SCHEMES,
    ablation_fidelity,
    fidelity,
    keep_mask,
    scheme_resid_post,
)
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.interactions.decoder import mlp_input_decoder, neuron_bias
from crosscoder_lib.interactions.mlp import activation, apply_mlp, mlp_weights
from crosscoder_lib.interactions.object import MLPInteractions

N_BLOCKS = 2


def brute_keep(p_TNK, n_active, scheme, u=None):
    T, N, K = p_TNK.shape
    keep = torch.zeros(T, N, K, dtype=torch.bool)
    for t in range(T):
        a = int(n_active[t])
        for n in range(N):
            act = list(range(a))
            if scheme == "zero" or not act:
                continue
            ranked = sorted(act, key=lambda k: (-abs(float(p_TNK[t, n, k])), k))  # lowest slot on ties
            if scheme == "none":
                kept = act
            elif scheme == "keep_largest":
                kept = [ranked[0]]
            elif scheme == "drop_largest":
                kept = ranked[1:]
            elif scheme == "drop_second":
                kept = [k for k in act if len(ranked) < 2 or k != ranked[1]]
            else:
                drop = int(float(u[t, n]) * a)
                kept = [k for k in act if k != drop]
            for k in kept:
                keep[t, n, k] = True
    return keep


@pytest.mark.parametrize("scheme", SCHEMES + ("zero",))
def test_keep_mask_matches_brute_force(scheme):
    g = torch.Generator().manual_seed(0)
    T, N, K = 7, 5, 4
    p = torch.randn(T, N, K, generator=g)
    n_active = torch.tensor([4, 0, 1, 2, 3, 4, 4])
    p *= (torch.arange(K)[None, :] < n_active[:, None])[:, None, :]  # padded slots carry 0
    p[5, :, 1] = p[5, :, 0]  # exact ties between slot 0 and 1
    p[6, 0, 3] = -10.0  # a negative dominant contribution
    gen = torch.Generator().manual_seed(11)
    mine = keep_mask(p, n_active, scheme, gen)
    u = torch.rand(T, N, generator=torch.Generator().manual_seed(11))
    assert torch.equal(mine, brute_keep(p, n_active, scheme, u))


def test_drop_random_is_seeded_and_uniform_over_active_slots():
    T, N, K = 400, 50, 4
    p = torch.randn(T, N, K)
    n_active = torch.full((T,), 3)
    a = keep_mask(p, n_active, "drop_random", torch.Generator().manual_seed(1))
    b = keep_mask(p, n_active, "drop_random", torch.Generator().manual_seed(1))
    c = keep_mask(p, n_active, "drop_random", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    dropped = (~a[..., :3]).float().mean((0, 1))  # fraction of (t, n) where each active slot is dropped
    torch.testing.assert_close(dropped, torch.full((3,), 1 / 3), atol=0.02, rtol=0)
    assert not a[..., 3].any()  # the padded slot is never kept
    assert (a.sum(-1) == 2).all()  # exactly one active slot dropped


def test_fidelity_definition():
    assert fidelity(2.0, 2.0, 5.0) == 1.0
    assert fidelity(5.0, 2.0, 5.0) == 0.0
    assert fidelity(3.5, 2.0, 5.0) == pytest.approx(0.5)
    assert fidelity(1.0, 1.0, 1.0) != fidelity(1.0, 1.0, 1.0)  # nan when the baseline changes nothing


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    return tiny_bridge(tmp_path_factory.mktemp("abl") / "m", n_blocks=N_BLOCKS, d_model=32, d_mlp=64,
                       seed=2)


@pytest.fixture(scope="module")
def token_batches(bridge):
    return [random_tokens(bridge, 2, 10, seed=i) for i in range(2)]


def random_crosscoder(bridge):
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(N_BLOCKS), d_model=bridge.cfg.d_model, n_features=48,
                           activation="topk", k=4, train_dec_bias=True, init_seed=3)
    cc = Crosscoder(cfg)
    with torch.no_grad():
        cc.W_dec_HXD.mul_(30.0)
        cc.b_dec_XD.normal_(0, 0.3)
    return cc


def test_none_and_zero_patches_follow_their_definition(bridge, token_batches):
    """'none' = resid_mid̂ + MLP(n2̂); 'zero' = resid_mid̂ + σ(β) W_out + b_out."""
    from crosscoder_lib.lm.harvest import harvest

    cc, mlp = random_crosscoder(bridge), mlp_weights(bridge)
    acts = harvest(bridge, token_batches[0], cc.cfg.hookpoints)
    codes = cc.encode(acts)
    recon = cc.decode(codes)
    _, b_dec_LD = mlp_input_decoder(cc)
    beta = neuron_bias(b_dec_LD.detach(), mlp)
    for l in range(N_BLOCKS):
        out = scheme_resid_post(codes, MLPInteractions.of(cc, mlp), l, ("none", "zero"), chunk_tokens=3)
        torch.testing.assert_close(out["none"], recon[:, 4 * l + 2] + apply_mlp(recon[:, 4 * l + 3], mlp, l),
                                   rtol=1e-4, atol=1e-4)
        zero = activation(beta[l], mlp.act_fn) @ mlp.W_out_LND[l] + mlp.b_out_LD[l]
        torch.testing.assert_close(out["zero"], recon[:, 4 * l + 2] + zero, rtol=1e-4, atol=1e-4)


def test_fidelity_run_is_seeded_and_by_definition(bridge, token_batches):
    cc, mlp = random_crosscoder(bridge), mlp_weights(bridge)
    a = ablation_fidelity(bridge, cc, mlp, token_batches, seed=0, progress=False)
    b = ablation_fidelity(bridge, cc, mlp, token_batches, seed=0, progress=False)
    c = ablation_fidelity(bridge, cc, mlp, token_batches, seed=1, progress=False)
    assert [r.block for r in a] == list(range(N_BLOCKS))
    for ra, rb, rc in zip(a, b, c):
        assert ra == rb
        assert ra.loss["drop_random"] != rc.loss["drop_random"]
        assert {k: v for k, v in ra.loss.items() if k != "drop_random"} == \
               {k: v for k, v in rc.loss.items() if k != "drop_random"}
        assert ra.fidelity["zero"] == 0.0
        for s in SCHEMES:
            expected = 1 - (ra.loss[s] - ra.loss_model) / (ra.loss["zero"] - ra.loss_model)
            assert ra.fidelity[s] == pytest.approx(expected)
        assert ra.n_tokens == 2 * 2 * 8  # two batches, two sequences, predictions after BOS


def test_exact_crosscoder_has_fidelity_one(bridge, token_batches):
    cc, mlp = exact_crosscoder(N_BLOCKS, bridge.cfg.d_model), mlp_weights(bridge)
    res = ablation_fidelity(bridge, cc, mlp, token_batches[:1], schemes=("none", "keep_largest"), progress=False)
    for r in res:
        assert r.loss["none"] == pytest.approx(r.loss_model, abs=1e-4)
        assert r.fidelity["none"] == pytest.approx(1.0, abs=1e-3)
        assert r.loss["zero"] != pytest.approx(r.loss_model, abs=1e-3)


def test_bad_arguments(bridge, token_batches):
    cc, mlp = random_crosscoder(bridge), mlp_weights(bridge)
    with pytest.raises(ValueError, match="out of range"):
        ablation_fidelity(bridge, cc, mlp, token_batches, blocks=[5], progress=False)
    with pytest.raises(ValueError, match="unknown ablation scheme"):
        keep_mask(torch.zeros(1, 1, 1), torch.ones(1, dtype=torch.long), "drop_everything")


def exact_window_crosscoder(first_block: int, d_model: int) -> Crosscoder:
    """Features ±e_{x,d} under ReLU reconstruct every hookpoint of a one-block window exactly."""
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(1, first_block=first_block), d_model=d_model,
                           n_features=2 * 5 * d_model, activation="relu", sparsity_coeff=1e-3)
    cc = Crosscoder(cfg)
    eye = torch.eye(5 * d_model).view(5 * d_model, 5, d_model)
    with torch.no_grad():
        cc.W_dec_HXD.copy_(torch.cat([eye, -eye]))
        cc.W_enc_XDH.copy_(cc.W_dec_HXD.permute(1, 2, 0))
    return cc


def test_a_window_crosscoder_patches_its_own_blocks(bridge, token_batches):
    """Blocks are the model's: a crosscoder over block 1 alone patches blocks.1.hook_resid_post (an
    exact one then changes nothing) given the whole model's MLP weights."""
    cc, mlp = exact_window_crosscoder(1, bridge.cfg.d_model), mlp_weights(bridge)
    (res,) = ablation_fidelity(bridge, cc, mlp, token_batches[:1], schemes=("none",), progress=False)
    assert res.block == 1
    assert res.loss["none"] == pytest.approx(res.loss_model, abs=1e-4) and res.fidelity["none"] == pytest.approx(1.0, abs=1e-3)
    assert res.loss["zero"] != pytest.approx(res.loss_model, abs=1e-3)
    with pytest.raises(ValueError, match=r"out of range.*\[1\]"):
        ablation_fidelity(bridge, cc, mlp, token_batches, blocks=[0], progress=False)
