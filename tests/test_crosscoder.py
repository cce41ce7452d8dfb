"""The crosscoder module: config validation, initialisation, sparse vs dense decoding, scaling."""

import math

import pytest
import torch

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
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
