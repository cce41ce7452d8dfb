"""The crosscoder module: config validation, initialisation, sparse vs dense decoding, scaling."""

import math

import pytest
import torch
import torch.nn.functional as F

from crosscoder_lib.crosscoder.activations import FiringTracker, SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.products import sparse_decode
from crosscoder_lib.crosscoder.training import TrainConfig
from crosscoder_lib.crosscoder.training.loss import Objective, interaction_term
from crosscoder_lib.crosscoder.training.step import TrainingStep, make_optimizer
from crosscoder_lib.interactions.kernels.buffers import GradientBuffers
from crosscoder_lib.interactions.mlp import MLPWeights
from crosscoder_lib.lm.hookpoints import mlp_input_slots, paper_hookpoints

HP = paper_hookpoints(2)  # 9 slots


def _cc(**kw):
    return Crosscoder(CrosscoderConfig(**({"hookpoints": HP, "d_model": 8, "n_features": 48, "k": 4} | kw)))


def _acts(B=64, X=9, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, X, D, generator=g) * torch.linspace(0.1, 30, X)[None, :, None]


def test_config_validation():
    with pytest.raises(ValueError, match="k=64 is larger than the dictionary"):
        CrosscoderConfig(HP, 8, 32, k=64)
    with pytest.raises(ValueError, match="unknown activation"):
        CrosscoderConfig(HP, 8, 32, activation="gelu")
    with pytest.raises(ValueError, match="sparsity_coeff > 0"):
        CrosscoderConfig(HP, 8, 32, activation="relu")
    with pytest.raises(ValueError, match="duplicate"):
        CrosscoderConfig(HP + HP[:1], 8, 32)
    with pytest.raises(ValueError, match="unknown CrosscoderConfig field"):
        CrosscoderConfig.from_dict({"hookpoints": HP, "d_model": 8, "n_features": 32, "lr": 1})
    cfg = CrosscoderConfig(HP, 64, 4096)
    assert cfg.aux_k == 32  # d_model / 2, SPEC §2
    assert CrosscoderConfig.from_dict(cfg.to_dict()) == cfg


def test_paper_initialisation():
    cc = _cc()
    norms = cc.W_dec_HXD.norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, cc.cfg.dec_init_norm))
    assert torch.equal(cc.W_enc_XDH, cc.W_dec_HXD.permute(1, 2, 0))
    assert not cc.b_enc_H.any() and not cc.b_dec_XD.any()
    assert not cc.b_dec_XD.requires_grad  # frozen at zero by default
    assert _cc(train_dec_bias=True).b_dec_XD.requires_grad
    assert torch.equal(_cc().W_dec_HXD, cc.W_dec_HXD)  # seeded
    assert not torch.equal(_cc(init_seed=1).W_dec_HXD, cc.W_dec_HXD)


def test_input_scale_gives_mean_norm_sqrt_d():
    cc = _cc()
    x = _acts()
    cc.set_input_scale(x)
    scaled = x * cc.input_scale_X[:, None]
    assert torch.allclose(scaled.norm(dim=-1).mean(0), torch.full((9,), math.sqrt(8)), rtol=1e-5)
    with pytest.raises(ValueError, match="all zero"):
        cc.set_input_scale(torch.zeros(4, 9, 8))
    with pytest.raises(ValueError, match=r"\[B, 9, 8\]"):
        cc(torch.zeros(4, 8, 8))


def test_sparse_decode_matches_dense_values_and_gradients():
    torch.manual_seed(0)
    cc = _cc(activation="topk", n_features=64, k=4)
    with torch.no_grad():
        cc.W_dec_HXD.normal_()
        cc.b_dec_XD.normal_()
    codes = cc.encode(_acts())
    assert cc.decode_path(codes) == "sparse"
    results = []
    for path in ("sparse", "dense"):
        val = codes.val_BK.detach().clone().requires_grad_()
        cc.zero_grad()
        out = cc.decode_scaled(SparseCodes(codes.idx_BK, val), path=path)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), val.grad.clone(), cc.W_dec_HXD.grad.clone()))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)
    assert _cc(decode="dense").decode_path(codes) == "dense"
    relu_cc = _cc(activation="relu", sparsity_coeff=1e-3)
    assert relu_cc.decode_path(relu_cc.encode(_acts())) == "dense"  # half the features active


def test_forward_units_and_decoder_slots_in_model_units():
    cc = _cc(activation="topk")
    x = _acts()
    cc.set_input_scale(x)
    out = cc(x)
    s = cc.input_scale_X[:, None]
    assert torch.allclose(out.x_scaled_BXD, x * s)
    assert torch.allclose(out.recon_BXD * s, out.recon_scaled_BXD, atol=1e-5)
    assert torch.allclose(cc.decode(out.codes), out.recon_BXD)
    # Σ_v a_v · decoder_slots_LHD[l, v] is the raw reconstruction at that slot (b_dec = 0)
    slots = mlp_input_slots(HP)
    W_LHD = cc.decoder_slots_LHD(slots)
    assert W_LHD.shape == (2, 48, 8)
    a_BH = torch.zeros(64, 48).scatter_add(1, out.codes.idx_BK, out.codes.val_BK)
    for l, slot in enumerate(slots):
        assert torch.allclose(a_BH @ W_LHD[l], out.recon_BXD[:, slot], atol=1e-5)
    W_LHD.sum().backward()  # differentiable through W_dec
    assert cc.W_dec_HXD.grad[:, slots].abs().sum() > 0


@pytest.mark.parametrize("activation", ["batchtopk", "topk", "relu", "jumprelu"])
def test_folding_the_scale_keeps_codes(activation):
    cc = _cc(activation=activation, sparsity_coeff=1e-3, jumprelu_init_threshold=0.05)
    with torch.no_grad():
        cc.b_dec_XD.normal_()
    x = _acts()
    cc.set_input_scale(x)
    if activation == "batchtopk":  # as if trained: inference by threshold
        cc.activation.threshold.fill_(0.05)
        cc.activation.n_threshold_updates.fill_(1)
    cc.eval()
    before = cc(x)
    cc.fold_input_scale()
    after = cc(x)
    assert torch.equal(cc.input_scale_X, torch.ones(9))
    assert torch.equal(before.codes.idx_BK, after.codes.idx_BK)
    assert torch.allclose(before.codes.val_BK, after.codes.val_BK, rtol=1e-4, atol=1e-5)
    assert torch.allclose(before.recon_BXD, after.recon_BXD, rtol=1e-4, atol=1e-4)


def test_sae_is_the_one_hookpoint_case():
    cc = Crosscoder(CrosscoderConfig(["blocks.0.hook_resid_post"], 8, 32, activation="topk", k=3))
    out = cc(torch.randn(5, 1, 8))
    assert out.recon_BXD.shape == (5, 1, 8) and out.codes.idx_BK.shape == (5, 3)


# -- the unpadded sparse decoder and the recycled gradients (crosscoder_lib.crosscoder.products) --------

def _padded_decode(idx_BK, val_BK, W_HXD, buffers=None):
    """What the sparse path was: every padded slot handed to embedding_bag."""
    return F.embedding_bag(idx_BK, W_HXD.flatten(1), per_sample_weights=val_BK.to(W_HXD.dtype), mode="sum")


def _ragged_codes(B, K, H, seed):
    """BatchTopK-like codes: distinct ids per token, 0..K active slots first, a few inner zeros."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(H, generator=g)[:K] for _ in range(B)])
    counts = torch.randint(0, K + 1, (B,), generator=g)
    val = torch.rand(B, K, generator=g) * (torch.arange(K)[None, :] < counts[:, None])
    val[torch.rand(B, K, generator=g) < 0.05] = 0.0
    return idx, val


@pytest.mark.parametrize("threads", [1, 2])
def test_unpadded_sparse_decode_equals_the_padded_call_bit_for_bit(threads):
    """Forward values, the weight gradient and the active slots' gradients are the padded call's
    bit for bit (with and without a recycled gradient buffer); inactive slots get exactly 0."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed, (B, K, H, X, D) in enumerate([(64, 30, 200, 3, 32), (256, 90, 1536, 2, 64), (50, 7, 40, 1, 8)]):
            idx, val0 = _ragged_codes(B, K, H, seed)
            g = torch.Generator().manual_seed(100 + seed)
            W0, grad_out = torch.randn(H, X, D, generator=g), torch.randn(B, X * D, generator=g)
            results = []
            buffers = GradientBuffers()
            for decode, bufs in ((_padded_decode, None), (sparse_decode, None), (sparse_decode, buffers),
                                 (sparse_decode, buffers)):  # the last one writes into a recycled buffer
                W = W0.clone().requires_grad_()
                val = val0.clone().requires_grad_()
                out = decode(idx, val, W, bufs)
                out.backward(grad_out)
                results.append((out.detach(), W.grad, val.grad))
                buffers.recycle([W])
            (out_p, gW_p, gv_p), active = results[0], val0 != 0
            for out, gW, gv in results[1:]:
                assert torch.equal(out, out_p) and torch.equal(gW, gW_p)
                assert torch.equal(gv[active], gv_p[active]) and torch.all(gv[~active] == 0)
    finally:
        torch.set_num_threads(before)


def _train_steps(cc, acts, n_steps, lam=0.0, mlp=None):
    cfg = TrainConfig(n_steps=n_steps, batch_size=acts.shape[0] // n_steps, lambda_int=lam, warmup_frac=0.0,
                      decay_frac=0.0)
    penalty = interaction_term(cc, mlp, "unweighted") if lam > 0 else None
    step = TrainingStep(Objective(cc, penalty), make_optimizer(cc, cfg), FiringTracker(cc.n_features, 2), cfg)
    ptrs = []
    for i in range(n_steps):
        step(acts[i * cfg.batch_size:(i + 1) * cfg.batch_size], i)
        ptrs.append(cc.W_dec_HXD.grad.data_ptr())
    return ptrs


@pytest.mark.parametrize("activation", ["batchtopk", "topk", "relu"])
def test_training_with_the_unpadded_decoder_and_recycled_gradients_is_bit_identical(activation, monkeypatch):
    """Whole training steps (AuxK reviving dead features, and the penalty for BatchTopK) end in the
    same weights bit for bit as with the padded decoder and fresh gradients, and the recycled
    gradient buffers are reused from step to step."""
    from crosscoder_lib.crosscoder import model as model_mod

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(5 * 96, 9, 8, generator=g) * torch.rand(5 * 96, 1, 1, generator=g).add(0.5)
    mlp = MLPWeights(torch.randn(2, 8, 16, generator=g), torch.zeros(2, 16), torch.randn(2, 16, 8, generator=g),
                     torch.zeros(2, 8), "gelu_new")
    lam = 10.0 if activation == "batchtopk" else 0.0
    states = []
    for reference in (False, True):
        cc = _cc(activation=activation, n_features=96, k=3, decode="sparse", aux_k=4, sparsity_coeff=1e-3)
        with torch.no_grad():
            cc.b_enc_H[:30] -= 4.0  # dead features, so AuxK decodes too
        cc.set_input_scale(acts)
        if reference:
            monkeypatch.setattr(model_mod, "sparse_decode", _padded_decode)
            monkeypatch.setattr(cc.grad_buffers, "recycle", lambda params: [setattr(p, "grad", None) for p in params])
        ptrs = _train_steps(cc, acts, 5, lam, mlp)
        states.append(cc.state_dict())
        if not reference and activation != "relu":  # ReLU's decoder-norm penalty adds a fresh gradient
            assert len(set(ptrs[1:])) == 1, "W_dec's gradient buffer was not reused"
    for name, t in states[0].items():
        assert torch.equal(t, states[1][name]), name
