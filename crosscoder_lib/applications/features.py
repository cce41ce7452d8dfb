"""What a crosscoder feature fires on: its top activations, their context, and its word category.

- :func:`top_activations`: each feature's ``k`` strongest token positions, computed sparsely;
- :func:`top_token_strings`, :func:`context_strings`: those tokens as strings, alone or with the
  text around them;
- :func:`feature_categories`: each feature's majority word category (the embedded world knows every
  word's, :func:`crosscoder_lib.world.words.category_of`), the ground truth that the cluster scores
  (:mod:`crosscoder_lib.applications.clustering`) and the offline judge's explanations
  (:mod:`crosscoder_lib.applications.judge`) are built on.

Codes are read as :mod:`crosscoder_lib.applications.codes` says: ``SparseCodes`` or a pair
``(idx_BK, val_BK)``, one row per token position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from crosscoder_lib.applications.arrays import as_numpy
from crosscoder_lib.applications.codes import analysis_codes, coalesced_rows

NO_CATEGORY = "<none>"
"""Category given to a feature with no top activations (never active on the data)."""


class TopActivations(NamedTuple):
    """Each feature's top-activating token positions, from :func:`top_activations`.

    positions_HK: long ``[H, k]``, flat positions (rows of the codes, i.e. ``seq * S + pos`` for
        tokens of shape ``[n_seq, S]``) by decreasing activation; -1 where a feature fired fewer
        than k times.
    values_HK: ``[H, k]`` activations there (0 in unused slots).
    token_ids_HK: long ``[H, k]`` token ids there (-1 in unused slots).
    n_active_H: long ``[H]``, how many positions each feature fired on in total.
    """

    positions_HK: torch.Tensor
    values_HK: torch.Tensor
    token_ids_HK: torch.Tensor
    n_active_H: torch.Tensor


def _select_top_per_feature(feats, vals, pos, n_features: int, k: int):
    """For triples (feature, value, position), the k largest values of each feature; ties go to
    the earlier position."""
    order = torch.argsort(pos, stable=True)
    order = order[torch.argsort(vals[order], descending=True, stable=True)]
    order = order[torch.argsort(feats[order], stable=True)]
    f, v, p = feats[order], vals[order], pos[order]
    counts = torch.bincount(f, minlength=n_features)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(f.numel(), device=f.device) - starts[f]
    sel = rank < k
    top_pos = torch.full((n_features, k), -1, dtype=torch.long, device=f.device)
    top_val = torch.zeros((n_features, k), dtype=vals.dtype, device=f.device)
    top_pos[f[sel], rank[sel]] = p[sel]
    top_val[f[sel], rank[sel]] = v[sel]
    return top_pos, top_val


def top_activations(codes, token_ids, n_features: int, k: int = 10, chunk_size: int = 65536) -> TopActivations:
    """The ``k`` token positions where each feature fires most strongly, computed sparsely.

    Only the active slots are read, a chunk of rows at a time, and each chunk's candidates are
    merged with the running top-k table, so memory is ``O(chunk_size · K + H · k)``.

    Args:
        codes: ``SparseCodes`` (``idx_BK``, ``val_BK``) or a pair, one row per token position.
        token_ids: token ids of those positions: ``[B]``, or ``[n_seq, S]`` with ``n_seq·S = B``
            (row-major, as the activations were flattened).
        n_features: dictionary size H.
    """
    idx_BK, val_BK = analysis_codes(codes)
    token_ids = torch.as_tensor(token_ids).reshape(-1).long()
    B = idx_BK.shape[0]
    if token_ids.numel() != B:
        raise ValueError(
            f"token_ids has {token_ids.numel()} positions but codes have B={B} rows; pass the "
            f"tokens the codes were computed on ([B] or [n_seq, S] flattened row-major)"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    device = idx_BK.device
    top_pos = torch.full((n_features, k), -1, dtype=torch.long, device=device)
    top_val = torch.zeros((n_features, k), dtype=val_BK.dtype, device=device)
    n_active = torch.zeros(n_features, dtype=torch.long, device=device)
    feat_of_slot = torch.arange(n_features, device=device).unsqueeze(1).expand(n_features, k)
    for start in range(0, B, chunk_size):
        rows, feats, vals = coalesced_rows(
            idx_BK[start : start + chunk_size], val_BK[start : start + chunk_size], n_features
        )
        n_active += torch.bincount(feats, minlength=n_features)
        held = top_pos >= 0
        top_pos, top_val = _select_top_per_feature(
            torch.cat([feats, feat_of_slot[held]]),
            torch.cat([vals, top_val[held]]),
            torch.cat([rows + start, top_pos[held]]),
            n_features,
            k,
        )
    tok = torch.where(top_pos >= 0, token_ids.to(device)[top_pos.clamp_min(0)], -1)
    return TopActivations(top_pos, top_val, tok, n_active)


def top_token_strings(top: TopActivations, id_to_str: Callable[[int], str]) -> list[list[str]]:
    """Each feature's top tokens as strings (unused slots dropped): the input of
    :func:`feature_categories` and ``judge.explain_feature``."""
    ids = top.token_ids_HK.cpu().tolist()
    return [[id_to_str(t) for t in row if t >= 0] for row in ids]


def context_strings(
    tokens_NS,
    positions,
    id_to_str: Callable[[int], str],
    left: int = 6,
    right: int = 2,
    mark: tuple[str, str] = ("«", "»"),
    sep: str = " ",
) -> list[str]:
    """Text around flat positions (``seq * S + pos``) of a token array ``[n_seq, S]``, the focus
    token wrapped in ``mark``; windows stop at the sequence's edges. Positions < 0 give ``""``."""
    tokens_NS = torch.as_tensor(tokens_NS)
    if tokens_NS.ndim != 2:
        raise ValueError(f"tokens_NS must be [n_seq, S]; got shape {tuple(tokens_NS.shape)}")
    n_seq, S = tokens_NS.shape
    out = []
    for p in as_numpy(positions).reshape(-1).tolist():
        if p < 0:
            out.append("")
            continue
        if p >= n_seq * S:
            raise ValueError(f"position {p} is outside the token array of {n_seq}×{S} positions")
        s, t = divmod(int(p), S)
        row = tokens_NS[s].tolist()
        words = [id_to_str(i) for i in row[max(0, t - left) : t]]
        words.append(f"{mark[0]}{id_to_str(row[t])}{mark[1]}")
        words += [id_to_str(i) for i in row[t + 1 : t + 1 + right]]
        out.append(sep.join(words))
    return out


class FeatureCategories(NamedTuple):
    """Per-feature ground-truth label from :func:`feature_categories`.

    categories: the majority word category of each feature's top tokens (:data:`NO_CATEGORY`
        for a feature with none).
    purity: float ``[H]``, share of its top tokens in that category (0 for none).
    """

    categories: list[str]
    purity: np.ndarray


def feature_categories(
    top_token_strs_per_feature: Sequence[Sequence[str]], category_of: Callable[[str], str]
) -> FeatureCategories:
    """Label each feature by the majority category of its top-activating tokens.

    Ties go to the category met first in the list (the top tokens come strongest first).
    """
    cats, purity = [], np.zeros(len(top_token_strs_per_feature))
    for h, toks in enumerate(top_token_strs_per_feature):
        if len(toks) == 0:
            cats.append(NO_CATEGORY)
            continue
        (best, n), = Counter(category_of(t) for t in toks).most_common(1)
        cats.append(best)
        purity[h] = n / len(toks)
    return FeatureCategories(cats, purity)
