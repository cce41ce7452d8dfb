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
- :class:`LLMJudge`: any OpenAI-compatible chat model, used only when a key is configured.

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
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

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


class LLMJudgeUnavailable(RuntimeError):
    """The LLM judge cannot run here: no API key configured, or the ``openai`` package missing."""


_SYSTEM_PROMPT = (
    "You help evaluate how features inside a language model group together. Every feature comes "
    "with a short explanation of the tokens that make it fire. You will be shown numbered options "
    "and must say which option fits. Reply with the option's number only, nothing else."
)


class LLMJudge:
    """Judge backed by an OpenAI-compatible chat-completions endpoint.

    The client is made only when the judge is constructed, from ``api_key`` or the
    ``OPENAI_API_KEY`` environment variable (``base_url`` selects any compatible server); the
    ``openai`` package is imported then, not before. Pass ``client=`` to use a ready client (any
    object with ``client.chat.completions.create(model=, messages=, temperature=)``). Options are
    numbered from 1 in the prompt; the first integer of the reply is the answer, and a reply
    without a valid number gives -1. Every prompt and reply is kept in ``transcript``.
    """

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float = 0.0,
        client=None,
    ):
        if client is None:
            key = api_key or os.environ.get("OPENAI_API_KEY")
            if not key:
                raise LLMJudgeUnavailable(
                    "LLMJudge needs an API key: set the OPENAI_API_KEY environment variable or pass "
                    "api_key=... (and base_url=... for a non-OpenAI server); without one, use "
                    "OfflineJudge()"
                )
            try:
                import openai
            except ImportError as e:
                raise LLMJudgeUnavailable(
                    "LLMJudge needs the 'openai' package: pip install openai (or use OfflineJudge())"
                ) from e
            client = openai.OpenAI(api_key=key, base_url=base_url)
        self.client, self.model, self.temperature = client, model, temperature
        self.transcript: list[tuple[list[dict], str]] = []

    @staticmethod
    def choose_prompt(explanation: str, candidates: list[list[str]]) -> list[dict]:
        """Chat messages asking which candidate cluster the explanation belongs to."""
        blocks = "\n\n".join(
            f"Group {i + 1}:\n" + "\n".join(f"- {e}" for e in c) for i, c in enumerate(candidates)
        )
        user = (
            f"Explanation of one feature:\n{explanation}\n\n"
            f"Groups of features, each described by its members' explanations:\n\n{blocks}\n\n"
            f"Which group (1-{len(candidates)}) does the feature belong to?"
        )
        return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": user}]

    @staticmethod
    def choose_member_prompt(cluster: list[str], tests: list[str]) -> list[dict]:
        """Chat messages asking which test explanation belongs to the cluster."""
        members = "\n".join(f"- {e}" for e in cluster)
        options = "\n".join(f"{i + 1}: {t}" for i, t in enumerate(tests))
        user = (
            f"Explanations of the features in one group:\n{members}\n\n"
            f"Candidate explanations, exactly one of which belongs to the group:\n{options}\n\n"
            f"Which candidate (1-{len(tests)}) belongs to the group?"
        )
        return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": user}]

    @staticmethod
    def parse_answer(reply: str | None, n_options: int) -> int:
        """0-based option from a reply (first integer, numbered from 1); -1 if there is none valid."""
        m = re.search(r"\d+", reply or "")
        if m is None:
            return -1
        k = int(m.group()) - 1
        return k if 0 <= k < n_options else -1

    def _ask(self, messages: list[dict]) -> str:
        resp = self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=self.temperature
        )
        reply = resp.choices[0].message.content or ""
        self.transcript.append((messages, reply))
        return reply

    def choose(self, explanation: str, candidates: list[list[str]]) -> int:
        return self.parse_answer(self._ask(self.choose_prompt(explanation, candidates)), len(candidates))

    def choose_member(self, cluster: list[str], tests: list[str]) -> int:
        return self.parse_answer(self._ask(self.choose_member_prompt(cluster, tests)), len(tests))


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

    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
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
    expl = dict(explanations) if isinstance(explanations, Mapping) else dict(enumerate(explanations))
    members: dict[int, list[int]] = {}
    for h, c in enumerate(labels.tolist()):
        if c >= 0 and expl.get(h):
            members.setdefault(int(c), []).append(h)
    eligible = sorted(
        c for c, m in members.items() if len(m) >= min_size and (max_size is None or len(m) <= max_size)
    )
    if len(eligible) < n_candidates:
        sizes = sorted((len(m) for m in members.values()), reverse=True)
        raise ValueError(
            f"only {len(eligible)} clusters have between {min_size} and {max_size or 'any'} explained "
            f"features, fewer than n_candidates={n_candidates}; cluster sizes are {sizes[:20]}"
            f"{'…' if len(sizes) > 20 else ''}. Lower min_size or n_candidates, or cluster more features."
        )

    rng = np.random.default_rng(seed)

    def describe(feats: list[int]) -> list[str]:
        if n_examples is not None and len(feats) > n_examples:
            feats = [feats[i] for i in sorted(rng.choice(len(feats), n_examples, replace=False))]
        return [expl[f] for f in feats]

    per_cluster, n_correct, n_trials, n_invalid = [], 0, 0, 0
    for c in eligible:
        feats = members[c]
        held_order = np.concatenate(
            [rng.permutation(len(feats)) for _ in range(-(-trials_per_cluster // len(feats)))]
        )[:trials_per_cluster]
        c_correct = 0
        for t in held_order.tolist():
            held = feats[t]
            own = describe([f for f in feats if f != held])
            others = rng.choice([o for o in eligible if o != c], n_candidates - 1, replace=False).tolist()
            pos = int(rng.integers(n_candidates))
            if orientation == "explanation_to_cluster":
                cands = [describe(members[o]) for o in others]
                cands.insert(pos, own)
                answer = judge.choose(expl[held], cands)
            else:
                tests = [expl[members[o][int(rng.integers(len(members[o])))]] for o in others]
                tests.insert(pos, expl[held])
                answer = judge.choose_member(own, tests)
            if not (isinstance(answer, (int, np.integer)) and 0 <= answer < n_candidates):
                n_invalid += 1
            c_correct += int(answer == pos)
        per_cluster.append(ClusterTrials(c, len(feats), c_correct, len(held_order)))
        n_correct += c_correct
        n_trials += len(held_order)
    chance = 1.0 / n_candidates
    p = binomtest(n_correct, n_trials, chance, alternative="greater").pvalue if n_trials else float("nan")
    return AssignmentResult(
        n_correct / n_trials if n_trials else float("nan"),
        n_correct,
        n_trials,
        n_invalid,
        chance,
        float(p),
        len(eligible),
        per_cluster,
        orientation,
    )
