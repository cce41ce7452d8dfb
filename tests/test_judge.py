"""Tests for crosscoder_lib.applications.judge: explanations, the held-out protocol's mechanics, the offline
judge on planted clusters, and the LLM judge's prompt/parse logic with a fake client."""

import builtins
from types import SimpleNamespace

import numpy as np
import pytest

from crosscoder_lib.applications.clustering import random_clusters_like
from crosscoder_lib.applications.judge import (
    AssignmentResult,
    Judge,
    OfflineJudge,
    explain_feature,
    held_out_assignment,
)
from crosscoder_lib.applications.llm_judge import LLMJudge, LLMJudgeUnavailable

VOCAB = {
    "animal": ["cat", "dog", "bird", "fox", "owl", "frog", "bear", "duck"],
    "colour": ["red", "blue", "green", "pink", "gold", "grey", "white", "black"],
    "food": ["cake", "apple", "bread", "soup", "pie", "milk", "jam", "egg"],
    "place": ["park", "forest", "house", "school", "beach", "town", "farm", "lake"],
    "name": ["Tom", "Lily", "Ben", "Sue", "Max", "Mia", "Sam", "Zoe"],
    "feeling": ["happy", "sad", "angry", "scared", "proud", "calm", "shy", "glad"],
    "action": ["run", "jump", "swim", "sing", "play", "eat", "look", "walk"],
    "punct": [".", ",", "!", "?", ";", ":", "'", "-"],
}


def planted_explanations(seed=0, n_clusters=12, size=8, noise=0.2):
    """Cluster c's features fire mostly on words of category c mod 8 (so some categories have two
    clusters), with a ``noise`` share of tokens from random categories."""
    rng = np.random.default_rng(seed)
    cats = list(VOCAB)
    labels, expls = [], []
    for c in range(n_clusters):
        for _ in range(size):
            toks, tcats = [], []
            for _ in range(6):
                cat = cats[c % len(cats)] if rng.random() > noise else cats[rng.integers(len(cats))]
                toks.append(VOCAB[cat][rng.integers(8)])
                tcats.append(cat)
            labels.append(c)
            expls.append(explain_feature(toks, tcats))
    return np.array(labels), expls


def test_explain_feature():
    assert explain_feature(["cat", "dog", "cat", "bird"], ["animal"] * 4) == "fires on animal words: cat, dog, bird"
    e = explain_feature(["cat", "red", "dog", "Tom", "owl"], ["animal", "colour", "animal", "name", "animal"])
    assert e == "fires mostly on animal words (3/5), also colour, name: cat, red, dog, Tom, owl"
    assert explain_feature([], []) == "never fires"
    assert explain_feature(["a"] * 9 + ["b"], ["x"] * 10, max_tokens=1).endswith(": a")
    with pytest.raises(ValueError, match="aligned"):
        explain_feature(["cat"], [])


class Oracle:
    """Knows which candidate is right by an explanation-identity trick: every explanation is
    tagged with its cluster."""

    def choose(self, explanation, candidates):
        tag = explanation.split("#")[1]
        return next(i for i, c in enumerate(candidates) if all(e.split("#")[1] == tag for e in c))

    def choose_member(self, cluster, tests):
        tag = cluster[0].split("#")[1]
        return next(i for i, t in enumerate(tests) if t.split("#")[1] == tag)


class AlwaysFirst:
    def choose(self, explanation, candidates):
        return 0

    def choose_member(self, cluster, tests):
        return 0


class Garbage:
    def choose(self, explanation, candidates):
        return 7

    def choose_member(self, cluster, tests):
        return -1


@pytest.mark.parametrize("orientation", ["explanation_to_cluster", "cluster_to_explanation"])
def test_protocol_mechanics(orientation):
    labels = np.repeat(np.arange(9), 7)
    labels[::10] = -1
    expl = [f"feature {h} #{c}#" for h, c in enumerate(labels)]
    expl[3] = None  # unexplained features are dropped
    assert isinstance(OfflineJudge(), Judge)
    r = held_out_assignment(labels, expl, Oracle(), min_size=6, trials_per_cluster=4, seed=1, orientation=orientation)
    assert isinstance(r, AssignmentResult)
    assert r.accuracy == 1.0 and r.n_invalid == 0 and r.chance == 0.2 and r.p_value < 1e-10
    sizes = {c: int(((labels == c) & np.array([e is not None for e in expl])).sum()) for c in range(9)}
    assert r.n_eligible_clusters == sum(s >= 6 for s in sizes.values())
    assert all(t.size == sizes[t.cluster] and t.size >= 6 for t in r.per_cluster)
    assert r.n_trials == 4 * r.n_eligible_clusters
    # the true answer's place is uniform, so "always answer 0" scores about chance
    r0 = held_out_assignment(labels, expl, AlwaysFirst(), min_size=2, trials_per_cluster=40, seed=0, orientation=orientation)
    assert abs(r0.accuracy - 0.2) < 0.06, r0.accuracy
    rg = held_out_assignment(labels, expl, Garbage(), min_size=2, trials_per_cluster=3, orientation=orientation)
    assert rg.accuracy == 0.0 and rg.n_invalid == rg.n_trials
    # seeded
    a = held_out_assignment(labels, expl, OfflineJudge(), min_size=2, seed=5, orientation=orientation)
    b = held_out_assignment(labels, expl, OfflineJudge(), min_size=2, seed=5, orientation=orientation)
    assert a == b


def test_protocol_bad_input():
    labels = np.repeat(np.arange(4), 6)
    expl = [f"x{h}" for h in range(24)]
    with pytest.raises(ValueError, match="fewer than n_candidates"):
        held_out_assignment(labels, expl, OfflineJudge())
    with pytest.raises(ValueError, match="orientation"):
        held_out_assignment(labels, expl, OfflineJudge(), orientation="sideways")
    with pytest.raises(TypeError, match="choose_member"):
        held_out_assignment(np.repeat(np.arange(6), 6), [f"x{h}" for h in range(36)],
                            SimpleNamespace(choose=lambda e, c: 0), orientation="cluster_to_explanation")


@pytest.mark.parametrize("orientation", ["explanation_to_cluster", "cluster_to_explanation"])
def test_offline_judge_beats_chance_on_planted_clusters_and_not_on_random(orientation):
    labels, expl = planted_explanations(seed=0)
    r = held_out_assignment(labels, expl, OfflineJudge(), trials_per_cluster=8, seed=0, orientation=orientation)
    assert r.n_trials == 96 and r.n_invalid == 0
    # Two clusters share each of 4 categories, so some confusions are legitimate.
    assert r.accuracy > 0.6, r.accuracy
    assert r.p_value < 1e-12
    rand = random_clusters_like(labels, seed=1)
    rr = held_out_assignment(rand, expl, OfflineJudge(), trials_per_cluster=8, seed=0, orientation=orientation)
    assert rr.accuracy < 0.35, rr.accuracy
    assert rr.accuracy < r.accuracy - 0.3


def test_offline_judge_similarities():
    j = OfflineJudge()
    sims = j.similarities(["fires on animal words: cat, dog"],
                          [["fires on colour words: red"], ["fires on animal words: owl, cat"], ["fires on food words: pie"]])
    assert np.argmax(sims) == 1 and sims[0] == 0 and sims[2] == 0
    assert j.choose("fires on name words: Tom", [["fires on name words: Sue"], ["fires on punct words: ."]]) == 0
    assert j.choose_member(["fires on punct words: !, ?"], ["fires on name words: Tom", "fires on punct words: ."]) == 1


def test_llm_judge_needs_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMJudgeUnavailable, match="OPENAI_API_KEY"):
        LLMJudge()


def test_llm_judge_needs_openai_package(monkeypatch):
    real_import = builtins.__import__

    def no_openai(name, *a, **k):
        if name == "openai":
            raise ImportError("No module named 'openai'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_openai)
    with pytest.raises(LLMJudgeUnavailable, match="pip install openai"):
        LLMJudge(api_key="sk-test")


class FakeClient:
    """Records requests and answers from a script."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, model, messages, temperature):
        self.requests.append(SimpleNamespace(model=model, messages=messages, temperature=temperature))
        msg = SimpleNamespace(content=self.replies.pop(0))
        return SimpleNamespace(choices=[SimpleNamespace(message=msg)])


def test_llm_judge_prompt_and_parsing_with_fake_client():
    client = FakeClient(["3", "Group 2.", "I am not sure", "9", None, "2"])
    j = LLMJudge(model="my-model", client=client, temperature=0.3)
    cands = [["fires on animal words: cat"], ["fires on colour words: red", "fires on colour words: blue"],
             ["fires on food words: pie"]]
    assert j.choose("fires on colour words: green", cands) == 2
    req = client.requests[0]
    assert req.model == "my-model" and req.temperature == 0.3
    user = req.messages[-1]["content"]
    assert req.messages[0]["role"] == "system" and "number" in req.messages[0]["content"]
    assert "fires on colour words: green" in user
    assert "Group 1:\n- fires on animal words: cat" in user
    assert "Group 2:\n- fires on colour words: red\n- fires on colour words: blue" in user
    assert "(1-3)" in user
    assert j.choose("x", cands) == 1
    assert j.choose("x", cands) == -1  # no number
    assert j.choose("x", cands) == -1  # out of range
    assert j.choose("x", cands) == -1  # empty reply
    assert j.choose_member(["fires on name words: Tom"], ["a", "b", "c"]) == 1
    user = client.requests[-1].messages[-1]["content"]
    assert "- fires on name words: Tom" in user and "1: a\n2: b\n3: c" in user
    assert len(j.transcript) == 6 and j.transcript[0][1] == "3"
    assert LLMJudge.parse_answer("Answer: 04", 5) == 3
    assert LLMJudge.parse_answer("0", 5) == -1
