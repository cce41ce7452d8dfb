"""Token batches: shapes, BOS policy, packing, seeding, empty streams, held-out split."""

from __future__ import annotations

import itertools

import pytest
import torch

from crosscoder_lib import data
from crosscoder_lib.tokenizer import BOS_ID, build_tokenizer


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
