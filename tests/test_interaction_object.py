"""MLPInteractions: the same numbers as the functions, G formed once per decoder state, a cache that
follows every change of the decoder (optimizer step, fold_input_scale, .to()), and the penalty's
gradient."""

from __future__ import annotations

import pytest
import torch
from test_interactions import random_case, random_mlp

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.interactions import object as object_module
from crosscoder_lib.interactions.decoder import mlp_input_decoder
from crosscoder_lib.interactions.measures import (
    dominant_share,
    feature_contributions,
    interaction_matrix,
    interaction_penalty,
    mlp_interaction_bound,
    token_interaction_scores,
)
from crosscoder_lib.interactions.object import MLPInteractions
from crosscoder_lib.lm.hookpoints import mlp_input_slots, paper_hookpoints

L, D = 3, 6


def crosscoder(seed: int = 0) -> Crosscoder:
    cfg = CrosscoderConfig(hookpoints=paper_hookpoints(L), d_model=D, n_features=24, activation="topk", k=4,
                           train_dec_bias=True, init_seed=seed)
    cc = Crosscoder(cfg)
    with torch.no_grad():
        cc.W_dec_HXD.mul_(5.0)
        cc.b_dec_XD.normal_(generator=torch.Generator().manual_seed(seed))
        cc.input_scale_X.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(seed + 1))  # not folded
    return cc


def codes_of(cc: Crosscoder, n: int = 20, seed: int = 0) -> SparseCodes:
    with torch.no_grad():
        return cc.encode(torch.randn(n, cc.n_slots, D, generator=torch.Generator().manual_seed(seed)))


def assert_same_as_functions(inter: MLPInteractions, codes, W_dec_LHD, b_dec_LD, mlp) -> None:
    """Every quantity of the object equals the function's, to the bit."""
    assert torch.equal(inter.dominant_share(codes), dominant_share(codes, W_dec_LHD, mlp))
    for a, b in zip(inter.matrix(codes), interaction_matrix(codes, W_dec_LHD, mlp)):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    for a, b in zip(inter.token_scores(codes), token_interaction_scores(codes, W_dec_LHD, mlp)):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(inter.contributions(codes), feature_contributions(codes, W_dec_LHD, mlp))
    for form in ("unweighted", "weighted"):
        for a, b in zip(inter.penalty(codes, form=form), interaction_penalty(codes, W_dec_LHD, mlp, form=form)):
            assert torch.equal(a, b)
    for a, b in zip(inter.bound(codes), mlp_interaction_bound(codes, W_dec_LHD, b_dec_LD, mlp)):
        assert torch.equal(a, b)


@pytest.fixture
def G_builds(monkeypatch) -> list:
    """The dtype of every G the objects form (the float64 twin of the bound forms its own)."""
    builds, real = [], object_module.input_products

    def counting(W_dec_LHD, mlp, *workspace):
        builds.append(W_dec_LHD.dtype)
        return real(W_dec_LHD, mlp, *workspace)

    monkeypatch.setattr(object_module, "input_products", counting)
    return builds


def test_object_from_rows_equals_the_functions():
    codes, W_dec, mlp = random_case()
    b_dec = torch.randn(L, D, generator=torch.Generator().manual_seed(9))
    assert_same_as_functions(MLPInteractions(W_dec, mlp, b_dec), codes, W_dec, b_dec, mlp)


def test_object_of_a_crosscoder_equals_the_functions_on_its_mlp_input_decoder():
    cc, mlp = crosscoder(), random_mlp()
    W, b = mlp_input_decoder(cc)
    assert_same_as_functions(MLPInteractions.of(cc, mlp), codes_of(cc), W.detach(), b.detach(), mlp)


def test_G_is_formed_once_while_the_decoder_is_unchanged(G_builds):
    cc, mlp = crosscoder(), random_mlp()
    inter = MLPInteractions.of(cc, mlp)
    for seed in range(3):  # three batches, every quantity
        codes = codes_of(cc, seed=seed)
        inter.dominant_share(codes), inter.matrix(codes), inter.token_scores(codes)
        with torch.no_grad():  # with autograd on, contributions form G from the live rows, to differentiate it
            inter.contributions(codes)
        inter.penalty(codes).penalty.backward()
        inter.bound(codes)
    assert G_builds == [torch.float32, torch.float64]  # the decoder's, and the bound's float64 twin


def test_contributions_are_differentiable_through_the_live_decoder():
    cc, mlp = crosscoder(), random_mlp()
    codes = codes_of(cc)
    grads = []
    for p in (lambda: MLPInteractions.of(cc, mlp).contributions(codes),
              lambda: feature_contributions(codes, mlp_input_decoder(cc)[0], mlp)):
        cc.zero_grad()
        p().abs().sum().backward()
        grads.append(cc.W_dec_HXD.grad.clone())
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


@pytest.mark.parametrize("fused", [False, True], ids=["adam", "fused-adam"])
def test_cache_follows_an_optimizer_step(G_builds, fused):
    # The trainer's fused Adam writes the parameters without bumping their version counter.
    cc, mlp = crosscoder(), random_mlp()
    opt = torch.optim.Adam(cc.parameters(), lr=0.1, fused=fused)
    inter = MLPInteractions.of(cc, mlp)
    codes = codes_of(cc)
    inter.matrix(codes)
    for step in range(2):
        before = inter.matrix(codes).total_HH
        n = len(G_builds)
        inter.penalty(codes).penalty.backward()  # the same state: no new G
        opt.step()
        opt.zero_grad()
        after = inter.matrix(codes).total_HH
        assert G_builds[n:] == [torch.float32]  # formed once for the new state
        assert not torch.equal(before, after)  # a stale G would have kept it
        W, b = (t.detach() for t in mlp_input_decoder(cc))
        assert_same_as_functions(inter, codes, W, b, mlp)


def test_cache_follows_fold_input_scale_and_a_change_of_dtype(G_builds):
    cc, mlp = crosscoder(), random_mlp()
    inter = MLPInteractions.of(cc, mlp)
    codes = codes_of(cc)
    inter.dominant_share(codes)
    cc.fold_input_scale()
    inter.dominant_share(codes)
    assert G_builds == [torch.float32, torch.float32]
    W, b = (t.detach() for t in mlp_input_decoder(cc))
    assert_same_as_functions(inter, codes, W, b, mlp)
    cc.double()
    codes64 = SparseCodes(codes.idx_BK, codes.val_BK.double())
    n = len(G_builds)
    share = inter.dominant_share(codes64)
    assert share.dtype == torch.float64 and G_builds[n:] == [torch.float64]
    assert torch.equal(share, dominant_share(codes64, mlp_input_decoder(cc)[0].detach(), mlp))


def test_penalty_gradient_equals_the_functional_penalty():
    """Through the live decoder: the object's gradient on W_dec_HXD and on the codes is the
    functional penalty's on ``decoder_slots_LHD``, to the bit, before and after an optimizer step."""
    cc, mlp = crosscoder(), random_mlp()
    opt = torch.optim.SGD(cc.parameters(), lr=0.05)
    inter = MLPInteractions.of(cc, mlp)
    slots = mlp_input_slots(cc.cfg.hookpoints)
    for _ in range(2):
        codes = codes_of(cc)
        grads = []
        for penalty in (lambda c: inter.penalty(c, form="weighted"),
                        lambda c: interaction_penalty(c, cc.decoder_slots_LHD(slots), mlp, form="weighted")):
            val = codes.val_BK.clone().requires_grad_(True)
            cc.zero_grad()
            stats = penalty(SparseCodes(codes.idx_BK, val))
            stats.penalty.backward()
            grads.append((stats.penalty.detach(), stats.dominant_share, cc.W_dec_HXD.grad.clone(), val.grad))
        for a, b in zip(*grads):
            assert torch.equal(a, b)
        assert grads[0][2].abs().sum() > 0
        opt.step()


def test_bad_inputs_are_named():
    codes, W_dec, mlp = random_case()
    with pytest.raises(ValueError, match="W_dec_LHD"):
        MLPInteractions(W_dec[:, :, :-1], mlp)
    with pytest.raises(ValueError, match="b_dec_LD"):
        MLPInteractions(W_dec, mlp).bound(codes)
    with pytest.raises(ValueError, match="form"):
        MLPInteractions(W_dec, mlp).penalty(codes, form="squared")


def test_inference_tensors_have_no_version_counter_but_work():
    codes, W_dec, mlp = random_case()
    with torch.inference_mode():
        W_inf = W_dec.clone()
    assert torch.equal(MLPInteractions(W_inf, mlp).dominant_share(codes), dominant_share(codes, W_dec, mlp))
