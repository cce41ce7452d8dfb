"""Judging feature clusters: automatic explanations and the held-out assignment protocol (Fig. 3).

The paper asks GPT-4o whether a feature's explanation can be told apart as belonging to its own
interaction cluster: one feature is held out, the judge sees its explanation and five candidate
clusters (its own, described by the remaining features' explanations, and four random others) and
picks one. Chance is 1/5. This module provides

- :func:`explain_feature`: a short automatic explanation from a feature's top tokens and their word
  categories (the embedded world knows every word's category);
- :func:`held_out_assignment`: the protocol, seeded, behind the :class:`Judge` interface;
- :class:`OfflineJudge`: a deterministic judge that compares explanations by weighted word overlap
  (no network), the default;
- :class:`~crosscoder_lib.applications.llm_judge.LLMJudge`: any OpenAI-compatible chat model,
  used only when a key is configured.

Orientation. The SPEC (and the paper's text) assign one explanation to one of 5 clusters
(``orientation="explanation_to_cluster"``, :meth:`Judge.choose`). The authors' script does the
reverse: it shows 5 explanations of the cluster and 5 test explanations (the held-out one and one
from each of 4 other clusters) and asks which test explanation belongs
(``orientation="cluster_to_explanation"``, :meth:`Judge.choose_member`). Both have chance 1/5;
both are offered so the book can say which one a number comes from.

A caveat for the book: offline explanations name the majority category of a feature's top tokens,
the same ground truth :func:`crosscoder_lib.applications.clustering.score_clusters` uses, so the offline judge's
accuracy and the ground-truth scores are not independent evidence.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

from crosscoder_lib.applications.arrays import as_numpy

# LLMJudge moved to crosscoder_lib.applications.llm_judge; still importable from here for the
# chapters and the facade's table until they name its new module.
from crosscoder_lib.applications.llm_judge import LLMJudge, LLMJudgeUnavailable  # noqa: F401

# ----------------------------------------------------------------------------------------------
# Explanations


def explain_feature(top_tokens: Sequence[str], categories: Sequence[str], max_tokens: int = 5) -> str:
    """A one-line explanation of a feature from its top-activating tokens (strongest first) and
    the word category of each, e.g. ``"fires on animal words: cat, dog, bird"``, or for a mixed
    feature ``"fires mostly on animal words (3/5), also colour: cat, dog, red"``.

    Tokens are listed once each, in order of first appearance, at most ``max_tokens``.
    """
    if len(top_tokens) != len(categories):
        raise ValueError(
            f"top_tokens ({len(top_tokens)}) and categories ({len(categories)}) must be aligned: "
            f"one category per top token"
        )
    if len(top_tokens) == 0:
        return "never fires"
    counts = Counter(categories)  # insertion order breaks ties: strongest token's category first
    (main, n_main), *rest = counts.most_common()
    words = list(dict.fromkeys(t.strip() or repr(t) for t in top_tokens))[:max_tokens]
    listed = ", ".join(words)
    if not rest:
        return f"fires on {main} words: {listed}"
    others = ", ".join(c for c, _ in rest)
    return f"fires mostly on {main} words ({n_main}/{len(categories)}), also {others}: {listed}"


# ----------------------------------------------------------------------------------------------
# Judges


@runtime_checkable
class Judge(Protocol):
    """Something that assigns explanations to clusters.

    ``choose`` returns the 0-based index of the candidate cluster (each a list of member
    explanations) the explanation belongs to; ``choose_member`` (needed only for the authors'
    orientation) returns the index of the test explanation that belongs to the cluster. Either
    returns -1 when it gives no valid answer (counted as wrong).
    """

    def choose(self, explanation: str, candidates: list[list[str]]) -> int: ...

    def choose_member(self, cluster: list[str], tests: list[str]) -> int: ...


_WORD = re.compile(r"\w+|[^\w\s]")


class OfflineJudge:
    """Deterministic judge working from the explanation texts alone, with no network.

    Each text becomes a bag of lower-cased words (punctuation marks count as words, so a
    punctuation feature's tokens are seen). A candidate's bag is the sum of its explanations'
    bags. Words are weighted by ``idf = log(n / df)`` over the ``n`` candidates of the trial, so
    words every candidate shares (the template's "fires on … words") weigh nothing; the answer is
    the candidate whose tf-idf vector has the largest cosine with the query's. Ties, including
    "nothing in common", go to the first candidate (candidate order is random in the protocol, so
    this is a chance guess, not a bias).
    """

    def __init__(self, stopwords: Sequence[str] = ("fires", "on", "mostly", "also", "words", "never")):
        self.stopwords = frozenset(w.lower() for w in stopwords)

    def _bag(self, texts: Sequence[str]) -> Counter:
        bag: Counter = Counter()
        for text in texts:
            bag.update(w for w in _WORD.findall(text.lower()) if w not in self.stopwords)
        return bag

    def similarities(self, query: Sequence[str], groups: Sequence[Sequence[str]]) -> np.ndarray:
        """tf-idf cosine of the query texts (pooled) with each group of texts (pooled)."""
        q = self._bag(query)
        bags = [self._bag(g) for g in groups]
        n = len(bags)
        df = Counter(w for b in bags for w in b)
        idf = {w: math.log(n / d) for w, d in df.items()}
        qv = {w: c * idf.get(w, 0.0) for w, c in q.items()}
        qn = math.sqrt(sum(v * v for v in qv.values()))
        sims = np.zeros(n)
        for i, b in enumerate(bags):
            bv = {w: c * idf[w] for w, c in b.items()}
            bn = math.sqrt(sum(v * v for v in bv.values()))
            if qn > 0 and bn > 0:
                sims[i] = sum(v * bv.get(w, 0.0) for w, v in qv.items()) / (qn * bn)
        return sims

    def choose(self, explanation: str, candidates: list[list[str]]) -> int:
        return int(np.argmax(self.similarities([explanation], candidates)))

    def choose_member(self, cluster: list[str], tests: list[str]) -> int:
        return int(np.argmax(self.similarities(cluster, [[t] for t in tests])))


# ----------------------------------------------------------------------------------------------
# The protocol


class ClusterTrials(NamedTuple):
    """One cluster's share of :func:`held_out_assignment`: its id, size (explained features),
    correct answers and trials."""

    cluster: int
    size: int
    n_correct: int
    n_trials: int


class AssignmentResult(NamedTuple):
    """Outcome of :func:`held_out_assignment`.

    accuracy: ``n_correct / n_trials``.
    n_correct, n_trials: over all eligible clusters.
    n_invalid: trials where the judge gave no valid answer (counted as wrong).
    chance: ``1 / n_candidates``.
    p_value: one-sided binomial test of ``n_correct`` against chance (scipy).
    n_eligible_clusters: clusters with ``min_size ≤ size ≤ max_size`` explained features.
    per_cluster: list of :class:`ClusterTrials`.
    orientation: see the module docstring.
    """

    accuracy: float
    n_correct: int
    n_trials: int
    n_invalid: int
    chance: float
    p_value: float
    n_eligible_clusters: int
    per_cluster: list
    orientation: str


def held_out_assignment(
    labels,
    explanations: Sequence[str | None] | Mapping[int, str],
    judge: Judge,
    min_size: int = 6,
    max_size: int | None = None,
    n_candidates: int = 5,
    n_examples: int | None = 5,
    trials_per_cluster: int = 5,
    seed: int = 0,
    orientation: Literal["explanation_to_cluster", "cluster_to_explanation"] = "explanation_to_cluster",
) -> AssignmentResult:
    """The paper's five-way held-out assignment test of cluster meaning (chance ``1/n_candidates``).

    For every cluster with ``min_size ≤ size ≤ max_size`` features that have an explanation
    ("eligible"; the authors used sizes 6–24 with 5 examples), ``trials_per_cluster`` times:
    hold out one feature (without replacement while the cluster lasts), describe its cluster by up
    to ``n_examples`` of the remaining explanations (all if None), draw ``n_candidates - 1`` other
    eligible clusters, put the true answer at a random place, and ask the judge:

    - ``"explanation_to_cluster"``: ``judge.choose(held-out explanation, candidate clusters)``,
      the others described like the own cluster, by up to ``n_examples`` member explanations;
    - ``"cluster_to_explanation"`` (the authors' script):
      ``judge.choose_member(own cluster's examples, test explanations)``, the tests being the
      held-out explanation and one random explanation from each other cluster.

    Args:
        labels: ``[H]`` cluster of each feature (-1: left out).
        explanations: per feature id, a string or None (features without one are left out), as a
            sequence of length H or a mapping.
        seed: seeds every draw; the result is a function of (inputs, seed) for a deterministic judge.
    """
    from scipy.stats import binomtest

    _check_protocol(judge, orientation, trials_per_cluster, min_size)
    expl, members, eligible = _eligible_clusters(as_numpy(labels), explanations, min_size,
                                                 max_size, n_candidates)
    protocol = _Protocol(judge, orientation, expl, members, eligible, n_candidates, n_examples,
                         np.random.default_rng(seed))
    per_cluster = [protocol.run(c, trials_per_cluster) for c in eligible]
    n_correct = sum(t.n_correct for t in per_cluster)
    n_trials = sum(t.n_trials for t in per_cluster)
    chance = 1.0 / n_candidates
    p = binomtest(n_correct, n_trials, chance, alternative="greater").pvalue if n_trials else float("nan")
    accuracy = n_correct / n_trials if n_trials else float("nan")
    return AssignmentResult(accuracy, n_correct, n_trials, protocol.n_invalid, chance, float(p),
                            len(eligible), per_cluster, orientation)


def _check_protocol(judge, orientation: str, trials_per_cluster: int, min_size: int) -> None:
    if orientation not in ("explanation_to_cluster", "cluster_to_explanation"):
        raise ValueError(
            f"orientation must be 'explanation_to_cluster' or 'cluster_to_explanation'; got {orientation!r}"
        )
    if orientation == "cluster_to_explanation" and not callable(getattr(judge, "choose_member", None)):
        raise TypeError(f"{type(judge).__name__} has no choose_member(cluster, tests) for this orientation")
    if trials_per_cluster < 1:
        raise ValueError(f"trials_per_cluster must be >= 1; got {trials_per_cluster}")
    if min_size < 2:
        raise ValueError(f"min_size must be >= 2 (one held out, one left to describe it); got {min_size}")


def _eligible_clusters(labels: np.ndarray, explanations, min_size: int, max_size: int | None,
                       n_candidates: int) -> tuple[dict[int, str], dict[int, list[int]], list[int]]:
    """``(explanation by feature, explained features by cluster, eligible clusters in order)``."""
    expl = dict(explanations) if isinstance(explanations, Mapping) else dict(enumerate(explanations))
    members: dict[int, list[int]] = {}
    for h, c in enumerate(labels.tolist()):
        if c >= 0 and expl.get(h):
            members.setdefault(int(c), []).append(h)
    eligible = sorted(c for c, m in members.items()
                      if len(m) >= min_size and (max_size is None or len(m) <= max_size))
    if len(eligible) < n_candidates:
        sizes = sorted((len(m) for m in members.values()), reverse=True)
        raise ValueError(
            f"only {len(eligible)} clusters have between {min_size} and {max_size or 'any'} explained "
            f"features, fewer than n_candidates={n_candidates}; cluster sizes are {sizes[:20]}"
            f"{'…' if len(sizes) > 20 else ''}. Lower min_size or n_candidates, or cluster more features."
        )
    return expl, members, eligible


@dataclass
class _Protocol:
    """The trials of :func:`held_out_assignment`. Every draw comes from one seeded generator, in
    the order the trials ask for them, so the result is a function of (inputs, seed)."""

    judge: Judge
    orientation: str
    expl: dict[int, str]
    members: dict[int, list[int]]
    eligible: list[int]
    n_candidates: int
    n_examples: int | None
    rng: np.random.Generator
    n_invalid: int = 0  # trials without a valid answer (counted as wrong)

    def run(self, c: int, n_trials: int) -> ClusterTrials:
        """``n_trials`` trials of cluster ``c``, held-out features drawn without replacement while
        the cluster lasts."""
        feats = self.members[c]
        held_order = np.concatenate(
            [self.rng.permutation(len(feats)) for _ in range(-(-n_trials // len(feats)))]
        )[:n_trials]
        correct = 0
        for t in held_order.tolist():
            answer, pos = self.ask(c, feats[t])
            if not (isinstance(answer, (int, np.integer)) and 0 <= answer < self.n_candidates):
                self.n_invalid += 1
            correct += int(answer == pos)
        return ClusterTrials(c, len(feats), correct, len(held_order))

    def ask(self, c: int, held: int) -> tuple[int, int]:
        """``(the judge's answer, the right one)`` for feature ``held`` of cluster ``c``."""
        own = self.describe([f for f in self.members[c] if f != held])
        others = self.rng.choice([o for o in self.eligible if o != c], self.n_candidates - 1,
                                 replace=False).tolist()
        pos = int(self.rng.integers(self.n_candidates))
        if self.orientation == "explanation_to_cluster":
            cands = [self.describe(self.members[o]) for o in others]
            cands.insert(pos, own)
            return self.judge.choose(self.expl[held], cands), pos
        tests = [self.expl[self.members[o][int(self.rng.integers(len(self.members[o])))]]
                 for o in others]
        tests.insert(pos, self.expl[held])
        return self.judge.choose_member(own, tests), pos

    def describe(self, feats: list[int]) -> list[str]:
        """A cluster's description: up to ``n_examples`` of its features' explanations."""
        if self.n_examples is not None and len(feats) > self.n_examples:
            chosen = sorted(self.rng.choice(len(feats), self.n_examples, replace=False))
            feats = [feats[i] for i in chosen]
        return [self.expl[f] for f in feats]
