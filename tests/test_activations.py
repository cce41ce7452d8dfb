"""Sparsifying activations, codes, AuxK and the firing tracker."""

import pytest
import torch

from crosscoder_lib.crosscoder.activations import (
    BatchTopK,
    FiringTracker,
    JumpReLU,
    ReLU,
    SparseCodes,
    TopK,
    auxk_codes,
    codes_to_dense,
    dense_to_codes,
    l0,
)


def _pre(B=32, H=64, seed=0):
    return torch.randn(B, H, generator=torch.Generator().manual_seed(seed))


def test_topk_keeps_k_largest_per_token():
    pre = _pre()
    codes = TopK(5)(pre)
    assert codes.idx_BK.shape == (32, 5)
    ref_vals, ref_idx = pre.topk(5, dim=-1)
    assert torch.equal(codes.idx_BK, ref_idx)
    assert torch.equal(codes.val_BK, ref_vals.relu())
    dense = codes_to_dense(codes, 64)
    assert torch.equal((dense > 0).sum(-1), torch.full((32,), 5))


def test_codes_roundtrip_and_padding_never_counts():
    a = _pre().relu() * (torch.rand(32, 64, generator=torch.Generator().manual_seed(1)) < 0.1)
    codes = dense_to_codes(a)
    assert torch.equal(codes_to_dense(codes, 64), a)
    assert torch.equal(l0(codes), (a != 0).sum(-1))
    # padded slots may repeat an active id; with value 0 they add nothing (scatter-add)
    idx = torch.cat([codes.idx_BK, codes.idx_BK[:, :1]], 1)
    val = torch.cat([codes.val_BK, torch.zeros(32, 1)], 1)
    assert torch.equal(codes_to_dense(SparseCodes(idx, val), 64), a)


def test_batchtopk_training_selects_k_times_batch_and_learns_threshold():
    act = BatchTopK(k=4)
    act.train()
    pre = _pre(B=16, H=64).abs() + 0.01  # all positive: exactly k·B survive
    with torch.enable_grad():
        codes = act(pre.requires_grad_())
    assert int(act.n_threshold_updates) == 0  # staged only: the trainer commits a good step
    act.commit_step()
    assert int(l0(codes).sum()) == 4 * 16
    kept = codes.val_BK[codes.val_BK > 0]
    assert torch.isclose(act.threshold, kept.min())
    assert int(act.n_threshold_updates) == 1
    # no update without gradients (evaluation inside a training loop)
    with torch.no_grad():
        act(pre * 10)
    act.commit_step()
    assert int(act.n_threshold_updates) == 1


def test_batchtopk_inference_is_batch_independent():
    act = BatchTopK(k=4)
    act.train()
    for s in range(50):
        act(_pre(B=64, seed=s).requires_grad_())
        act.commit_step()
    act.eval()
    pre = _pre(B=64, seed=99)
    together = codes_to_dense(act(pre), 64)
    alone = torch.cat([codes_to_dense(act(pre[i:i + 1]), 64) for i in range(64)])
    assert torch.equal(together, alone)
    assert abs(float(l0(act(pre)).float().mean()) - 4) < 1.5  # threshold gives L0 ≈ k
    batch_mode = BatchTopK(k=4, inference="batch")
    batch_mode.load_state_dict(act.state_dict())
    batch_mode.eval()
    assert int(l0(batch_mode(pre)).sum()) == 4 * 64  # exact reproduction of the paper's rule


def test_batchtopk_threshold_tracks_recent_batches():
    act = BatchTopK(k=2, beta=0.9)
    act.train()
    for s in range(100):
        act((_pre(seed=s) * (1 if s < 50 else 5)).requires_grad_())
        act.commit_step()
    late_min = act.threshold.item()
    fresh = BatchTopK(k=2, beta=0.9)
    fresh.train()
    for s in range(60, 100):
        fresh((_pre(seed=s) * 5).requires_grad_())
        fresh.commit_step()
    assert abs(late_min - fresh.threshold.item()) / fresh.threshold.item() < 0.05


def test_relu_penalty_is_decoder_norm_weighted_l1():
    pre = _pre()
    act = ReLU(coeff=0.5)
    codes = act(pre)
    assert torch.equal(codes_to_dense(codes, 64), pre.relu())
    norms = torch.rand(64, generator=torch.Generator().manual_seed(2))
    want = 0.5 * (pre.relu() * norms).sum(-1).mean()
    assert torch.allclose(act.sparsity_penalty(pre, codes, norms), want)


def test_jumprelu_forward_and_threshold_gradient():
    act = JumpReLU(64, coeff=1.0, bandwidth=0.5, init_threshold=0.3)
    pre = _pre().requires_grad_()
    codes = act(pre)
    dense = codes_to_dense(codes, 64)
    assert torch.equal(dense, pre.detach() * (pre.detach() > 0.3))
    act.sparsity_penalty(pre, codes, torch.ones(64)).backward()
    g = act.log_threshold_H.grad
    # features with pre-activations near θ get a negative gradient: raising θ lowers L0
    assert (g <= 0).all() and (g < 0).any()


def test_auxk_reads_dead_features_preactivations():
    pre = _pre()
    dead = torch.zeros(64, dtype=torch.bool)
    assert auxk_codes(pre, dead, 8) is None
    dead[[3, 10, 20]] = True
    codes = auxk_codes(pre, dead, 8)
    assert codes.idx_BK.shape == (32, 3)  # min(k_aux, n_dead)
    assert set(codes.idx_BK.unique().tolist()) <= {3, 10, 20}
    assert torch.equal(codes.val_BK.sort(-1).values, pre[:, [3, 10, 20]].sort(-1).values)
    # a dead feature whose pre-activations are all negative still gets a gradient (no ReLU)
    pre = (_pre() - 10).requires_grad_()
    auxk_codes(pre, dead, 8).val_BK.sum().backward()
    assert (pre.grad[:, [3, 10, 20]] != 0).all() and (pre.grad[:, 0] == 0).all()


def test_firing_tracker_marks_dead_after_window():
    tr = FiringTracker(6, window=3)
    fire_0_1 = SparseCodes(torch.tensor([[0, 1], [1, 5]]), torch.tensor([[1.0, 2.0], [1.0, 0.0]]))
    for _ in range(3):
        tr.update(fire_0_1)
    assert tr.dead_H.tolist() == [False, False, True, True, True, True]  # 5 only in a padded slot
    assert tr.dead_fraction == pytest.approx(4 / 6)
