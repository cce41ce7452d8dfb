"""Tests for crosscoder_lib.applications.clustering, coactivation and features: AP on planted matrices,
sparse co-activation and top-k against dense brute force, ground-truth scores against sklearn / hand
counts."""

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score

from crosscoder_lib.applications.clustering import (
    ClusteringDidNotConverge,
    cluster_interactions,
    cluster_members,
    plot_clustered_matrix,
    random_clusters_like,
    score_against_random,
    score_clusters,
)
from crosscoder_lib.applications.coactivation import coactivation_matrix
from crosscoder_lib.applications.features import (
    NO_CATEGORY,
    context_strings,
    feature_categories,
    top_activations,
    top_token_strings,
)


def planted_matrix(seed=0, H=60, n_blocks=6, n_dead=5):
    """Asymmetric non-negative matrix: strong within planted blocks, weak between; plus dead
    features (zero rows and columns) at the end."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_blocks), H // n_blocks)
    rng.shuffle(truth)
    same = truth[:, None] == truth[None, :]
    M = np.where(same, rng.uniform(0.5, 1.5, (H, H)), rng.uniform(0.0, 0.3, (H, H)))
    np.fill_diagonal(M, 0.0)
    M = np.pad(M, ((0, n_dead), (0, n_dead)))
    cats = [f"cat{t}" for t in truth] + [NO_CATEGORY] * n_dead
    return M, truth, cats


@pytest.mark.parametrize("method", ["precomputed", "euclidean_rows"])
def test_planted_blocks_recovered_random_not(method):
    M, truth, cats = planted_matrix(seed=0)
    cl = cluster_interactions(torch.tensor(M), method=method, seed=0)
    H = len(truth)
    assert (cl.labels_H[H:] == -1).all(), "dead features must be left out"
    assert (cl.labels_H[:H] >= 0).all()
    assert cl.n_clusters == len(np.unique(cl.labels_H[:H])) == len(cl.exemplars)
    assert all(cl.labels_H[e] == c for c, e in enumerate(cl.exemplars))
    res = score_against_random(cl.labels_H, cats, n_seeds=20)
    # Median preference lets the precomputed form split blocks further (pure, smaller clusters);
    # it must never merge two blocks.
    assert res.scores.purity == 1.0
    assert res.scores.ami > (0.95 if method == "euclidean_rows" else 0.8)
    assert abs(res.random_ami_mean) < 0.05 and res.random_ami_std < 0.1
    assert res.scores.ami > res.random_ami_mean + 10 * res.random_ami_std
    assert res.random_purity_mean < 0.6


def test_precomputed_with_lower_preference_finds_exact_blocks():
    # A self-similarity below every off-block similarity (here -2 < 0) stops AP from splitting
    # blocks: each block keeps one exemplar.
    M, truth, _ = planted_matrix(seed=1, n_dead=0)
    cl = cluster_interactions(M, "precomputed", preference=-2.0, seed=1)
    assert cl.n_clusters == 6
    assert adjusted_mutual_info_score(truth, cl.labels_H) == pytest.approx(1.0)


def test_active_mask_and_bad_input():
    M, truth, _ = planted_matrix(seed=2, n_dead=0)
    mask = np.ones(len(truth), bool)
    mask[:7] = False
    cl = cluster_interactions(M, "euclidean_rows", active_mask=mask)
    assert (cl.labels_H[:7] == -1).all() and (cl.labels_H[7:] >= 0).all()
    with pytest.raises(ValueError, match="square"):
        cluster_interactions(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="no feature to cluster"):
        cluster_interactions(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="active_mask"):
        cluster_interactions(M, active_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="method"):
        cluster_interactions(M, method="cosine")


def test_nonconvergence_raises_or_warns():
    M, _, _ = planted_matrix(seed=0, n_dead=0)
    with pytest.raises(ClusteringDidNotConverge, match="damping"):
        cluster_interactions(M, "precomputed", max_iter=3, convergence_iter=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cl = cluster_interactions(M, "precomputed", max_iter=3, convergence_iter=2, on_nonconvergence="warn")
    assert not cl.converged
    assert any("did not converge" in str(x.message) for x in w)


def test_random_clusters_like_keeps_sizes():
    labels = np.array([0, 0, 0, 1, 1, -1, 2, 2, 2, 2, -1])
    r = random_clusters_like(labels, seed=3)
    assert (r[labels == -1] == -1).all()
    assert sorted(np.bincount(r[r >= 0])) == sorted(np.bincount(labels[labels >= 0]))
    assert any(not np.array_equal(random_clusters_like(labels, s), labels) for s in range(5))
    assert np.array_equal(random_clusters_like(labels, 3), r)
    assert {k: len(v) for k, v in cluster_members(labels).items()} == {2: 4, 0: 3, 1: 2}


def random_codes(B, K, H, seed=0, pad_frac=0.3):
    """Codes with padded slots (value 0, id 0 repeated), repeated features across tokens and a few
    duplicated ids inside a row."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, H, (B, K), generator=g)
    val = torch.rand(B, K, generator=g) + 0.1
    pad = torch.rand(B, K, generator=g) < pad_frac
    idx[pad], val[pad] = 0, 0.0
    idx[::7, 1] = idx[::7, 0]  # duplicated feature within a row
    return idx, val


def dense_from(idx, val, H):
    dense = torch.zeros(idx.shape[0], H, dtype=torch.float64)
    dense.scatter_add_(1, idx, val.double())  # duplicates sum, as a decode would
    return dense


@pytest.mark.parametrize("normalise", ["count", "cosine", "jaccard"])
@pytest.mark.parametrize("weighted", [False, True])
def test_coactivation_matches_dense_bruteforce(normalise, weighted):
    if normalise == "jaccard" and weighted:
        with pytest.raises(ValueError, match="jaccard"):
            coactivation_matrix((torch.zeros(1, 1).long(), torch.zeros(1, 1)), 3, normalise, weighted)
        return
    H, B, K = 13, 300, 6
    idx, val = random_codes(B, K, H)
    dense = dense_from(idx, val, H)
    A = dense if weighted else (dense != 0).double()
    C = A.T @ A
    d = torch.diagonal(C)
    if normalise == "cosine":
        ref = C / torch.sqrt(d[:, None] * d[None, :])
    elif normalise == "jaccard":
        ref = C / (d[:, None] + d[None, :] - C)
    else:
        ref = C
    ref = torch.nan_to_num(ref)
    got = coactivation_matrix((idx, val), H, normalise=normalise, weighted=weighted, chunk_size=37)
    torch.testing.assert_close(got, ref)
    # a subset of features gives the matching submatrix
    feats = torch.tensor([5, 2, 11])
    sub = coactivation_matrix((idx, val), H, normalise=normalise, weighted=weighted, features=feats)
    torch.testing.assert_close(sub, ref[feats][:, feats])


def test_coactivation_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="n_features"):
        coactivation_matrix((torch.tensor([[5]]), torch.tensor([[1.0]])), 3)
    with pytest.raises(TypeError, match="SparseCodes"):
        coactivation_matrix(torch.zeros(3, 3), 3)


def test_top_activations_matches_dense_topk():
    H, B, K, k = 11, 240, 5, 4
    idx, val = random_codes(B, K, H, seed=1, pad_frac=0.5)
    val = (val * 4).round() / 4  # force ties: earlier positions must win
    idx[:, :] = torch.where(idx == 10, 9, idx)  # feature 10 never fires
    val[idx == 3] = torch.where(torch.arange(B)[:, None].expand(B, K)[idx == 3] < 200, 0.0, val[idx == 3])
    tokens = torch.randint(0, 50, (12, 20))
    top = top_activations((idx, val), tokens, H, k=k, chunk_size=33)
    dense = dense_from(idx, val.double(), H)
    for h in range(H):
        col = dense[:, h]
        nz = torch.nonzero(col).flatten()
        assert int(top.n_active_H[h]) == nz.numel()
        # brute force: sort by (-value, position)
        ranked = sorted(nz.tolist(), key=lambda p: (-float(col[p]), p))[:k]
        got = [p for p in top.positions_HK[h].tolist() if p >= 0]
        assert got == ranked, h
        assert torch.allclose(top.values_HK[h, : len(got)].double(), col[ranked])
        assert top.token_ids_HK[h, : len(got)].tolist() == tokens.reshape(-1)[ranked].tolist()
        assert (top.token_ids_HK[h, len(got) :] == -1).all()
    assert (top.positions_HK[10] == -1).all()
    strs = top_token_strings(top, lambda i: f"w{i}")
    assert strs[10] == [] and strs[0] == [f"w{t}" for t in top.token_ids_HK[0].tolist() if t >= 0]
    with pytest.raises(ValueError, match="token_ids"):
        top_activations((idx, val), tokens[:3], H)


def test_context_strings_stop_at_sequence_edges():
    tokens = torch.arange(12).reshape(3, 4)
    out = context_strings(tokens, [0, 5, 11, -1], lambda i: f"t{i}", left=2, right=1)
    assert out == ["«t0» t1", "t4 «t5» t6", "t9 t10 «t11»", ""]
    with pytest.raises(ValueError, match="outside"):
        context_strings(tokens, [12], str)


def test_feature_categories_majority_and_purity():
    cat_of = {"cat": "animal", "dog": "animal", "red": "colour", "blue": "colour", "Tom": "name"}.get
    fc = feature_categories([["cat", "dog", "red"], ["red", "cat"], [], ["Tom"]], cat_of)
    assert fc.categories == ["animal", "colour", NO_CATEGORY, "name"]  # tie -> first met
    np.testing.assert_allclose(fc.purity, [2 / 3, 1 / 2, 0.0, 1.0])


def test_score_clusters_against_hand_counts_and_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 5, 80)
    cats = list(rng.choice(["a", "b", "c", NO_CATEGORY], 80, p=[0.3, 0.3, 0.3, 0.1]))
    s = score_clusters(labels, cats)
    keep = [i for i in range(80) if labels[i] >= 0 and cats[i] != NO_CATEGORY]
    lab = labels[keep]
    cat = [cats[i] for i in keep]
    hand = sum(max(sum(1 for i in range(len(lab)) if lab[i] == c and cat[i] == k) for k in "abc") for c in set(lab))
    assert s.purity == pytest.approx(hand / len(keep))
    assert s.ami == pytest.approx(adjusted_mutual_info_score(cat, lab))
    assert s.n_features == len(keep) and s.n_clusters == len(set(lab))
    with pytest.raises(ValueError, match="indexed by feature"):
        score_clusters(labels, cats[:5])


def test_plot_clustered_matrix():
    M, _, _ = planted_matrix(seed=0, H=12, n_blocks=3, n_dead=2)
    labels = cluster_interactions(M, "euclidean_rows").labels_H
    ax = plot_clustered_matrix(M, labels)
    assert "cluster" in ax.get_xlabel() and "cluster" in ax.get_ylabel()
    assert ax.images[0].get_array().shape == (12, 12)
    import matplotlib.pyplot as plt

    plt.close("all")
