"""Training from a run description: the dict (a JSON file on the command line) ``crosscoder train`` reads.

Keys (only ``model`` is required)::

    model        a load_model name or folder: "embedded:clean", a path, a hub id
    hookpoints   "paper" (the paper's layout for the model's blocks) or a list of hook names
    data         DataConfig fields: the texts and their token batches
    buffer       BufferConfig fields: the activation buffer that harvests as training reads
    crosscoder   CrosscoderConfig fields (hookpoints and d_model are filled in from the model)
    train        TrainConfig fields; a list train.lambda_int is a λ sweep
    options      RunOptions fields: progress, log/checkpoint cadence, device, W&B
    out_dir      where checkpoints, the final model and the results go
    resume       false: start over even when out_dir holds a checkpoint (default true)

Everything is validated before the model is loaded: an unknown key (top level or in a section)
names the valid ones, and a value of the wrong type names its field (JSON values are coerced by
field type: ``1e3`` for an int, ``"3e-4"`` for a float; :mod:`crosscoder_lib.crosscoder.jsonconfig`).

A list ``train.lambda_int`` is a λ sweep: each λ is trained in turn on the same activation stream
into ``out_dir/lambda_<λ>`` (each resumable on its own), a list of results is returned and
``out_dir/sweep.json`` holds every λ's final metrics. Under ``torchrun`` every rank harvests its
share of each token batch (:meth:`~crosscoder_lib.crosscoder.distributed.DataParallel.sharded_harvester`;
a ``cache_dir`` gets one sub-folder per rank) and only rank 0 writes files. A resume checks the
model's fingerprint and the data and buffer sections (:mod:`.identity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from crosscoder_lib.crosscoder.distributed import SingleProcess, data_parallel
from crosscoder_lib.crosscoder.jsonconfig import ConfigError, JsonConfig
from crosscoder_lib.crosscoder.model import CrosscoderConfig
from crosscoder_lib.crosscoder.training.config import RunOptions, TrainConfig
from crosscoder_lib.crosscoder.training.loop import TrainResult, train
from crosscoder_lib.files import write_json
from crosscoder_lib.interactions.mlp import mlp_weights
from crosscoder_lib.lm.harvest import ActivationBuffer, harvest
from crosscoder_lib.lm.hookpoints import paper_hookpoints, validate_hookpoints
from crosscoder_lib.lm.loading import load_model
from crosscoder_lib.world.data import load_texts, token_batches

RUN_KEYS = ("model", "hookpoints", "data", "buffer", "crosscoder", "train", "options", "out_dir", "resume")


@dataclass
class DataConfig(JsonConfig):
    """The ``data`` section: the texts and their token batches."""

    HINT = "a text file is data.dataset = its path"

    dataset: str = "embedded"
    """``"embedded"`` (the generated corpus), a local TinyStoriesInstruct-layout or one-per-line text
    file, or a hub id such as ``"roneneldan/TinyStoriesInstruct"``, read by
    :func:`crosscoder_lib.world.data.load_texts`'s train split."""
    n_texts: int = 20000
    context_len: int = 128
    batch_size: int = 32
    """Sequences per token batch (one harvest)."""
    seed: int = 0

    def __post_init__(self):
        self._coerce_fields()


@dataclass
class BufferConfig(JsonConfig):
    """The ``buffer`` section: :class:`~crosscoder_lib.lm.harvest.ActivationBuffer` settings."""

    capacity_tokens: int = 16384
    exclude_first: bool = True
    cache_dir: str | None = None

    def __post_init__(self):
        self._coerce_fields()


class RunPlan(NamedTuple):
    """A validated run config (:func:`read_run_config`); nothing is loaded yet."""

    raw: dict
    model: str
    hookpoints: str | list[str]
    data: DataConfig
    buffer: BufferConfig
    crosscoder: dict
    trains: list[TrainConfig]
    sweep: bool
    options: RunOptions
    out_dir: Path | None
    resume: bool


def _train_configs(train_d) -> tuple[list[TrainConfig], bool]:
    TrainConfig.check_keys({k: v for k, v in train_d.items() if k not in RunOptions.field_names()}, "train")
    moved = sorted(set(train_d) & set(RunOptions.field_names()))
    if moved:
        raise ConfigError(f"train.{moved[0]} is a run option (a resumed run may change it): move "
                          + ", ".join(f"train.{k}" for k in moved) + " to the \"options\" section")
    lam = train_d.get("lambda_int")
    if not isinstance(lam, list):
        return [TrainConfig.from_dict(train_d, "train")], False
    if not lam:
        raise ConfigError("train.lambda_int is an empty list; give at least one λ")
    return [TrainConfig.from_dict(train_d | {"lambda_int": v}, "train") for v in lam], True


def read_run_config(config: dict) -> RunPlan:
    """Validate a run config (module docstring) without loading anything."""
    if not isinstance(config, dict):
        raise ConfigError(f"a run config is a JSON object with keys {', '.join(RUN_KEYS)}, got {config!r}")
    unknown = sorted(set(config) - set(RUN_KEYS))
    if unknown:
        raise ConfigError(f"unknown run-config key(s) {unknown}; valid: {', '.join(RUN_KEYS)}")
    if not isinstance(config.get("model"), str):
        raise ConfigError("the run config needs \"model\": a load_model name or folder (\"embedded:clean\", "
                          f"a path, a hub id), got {config.get('model')!r}")
    hp = config.get("hookpoints", "paper")
    if hp != "paper" and not (isinstance(hp, list) and hp and all(isinstance(h, str) for h in hp)):
        raise ConfigError(f"hookpoints must be \"paper\" or a list of hook names, got {hp!r}")
    CrosscoderConfig.check_keys(config.get("crosscoder", {}), "crosscoder")
    trains, sweep = _train_configs(config.get("train", {}))
    out_dir, resume = config.get("out_dir"), config.get("resume", True)
    if out_dir is not None and not isinstance(out_dir, str):
        raise ConfigError(f"out_dir must be a folder path or null, got {out_dir!r}")
    if not isinstance(resume, bool):
        raise ConfigError(f"resume must be true or false, got {resume!r}")
    return RunPlan(config, config["model"], hp, DataConfig.from_dict(config.get("data", {}), "data"),
                   BufferConfig.from_dict(config.get("buffer", {}), "buffer"), config.get("crosscoder", {}),
                   trains, sweep, RunOptions.from_dict(config.get("options", {}), "options"),
                   None if out_dir is None else Path(out_dir), resume)


def _activation_source(bridge, hookpoints: list[str], plan: RunPlan, parallel: SingleProcess) -> ActivationBuffer:
    d, b = plan.data, plan.buffer
    texts = load_texts(d.dataset, "train", d.n_texts, seed=d.seed)

    def tokens():
        return token_batches(texts, bridge.tokenizer, batch_size=d.batch_size, context_len=d.context_len,
                             seed=d.seed, epochs=None)

    harvester = parallel.sharded_harvester(lambda t: harvest(bridge, t, hookpoints, exclude_first=b.exclude_first))
    return ActivationBuffer(bridge, tokens, hookpoints, batch_size=plan.trains[0].batch_size,
                            seed=plan.trains[0].seed, harvester=harvester, capacity_tokens=b.capacity_tokens,
                            exclude_first=b.exclude_first, cache_dir=parallel.private_dir(b.cache_dir))


def run_plan(plan: RunPlan) -> TrainResult | list[TrainResult]:
    """Train what :func:`read_run_config` validated (see :func:`run_from_config`)."""
    parallel = data_parallel()
    bridge = load_model(plan.model, device=plan.options.device)
    hookpoints = paper_hookpoints(bridge.cfg.n_layers) if plan.hookpoints == "paper" else plan.hookpoints
    validate_hookpoints(hookpoints, bridge)
    source = _activation_source(bridge, hookpoints, plan, parallel)
    cc_cfg = CrosscoderConfig.from_dict({"hookpoints": hookpoints, "d_model": bridge.cfg.d_model}
                                        | plan.crosscoder, "crosscoder")
    mlp = mlp_weights(bridge) if any(c.lambda_int > 0 for c in plan.trains) else None
    data_id = {"model": plan.model, "data": plan.data.to_dict(),
               "buffer": {"capacity_tokens": plan.buffer.capacity_tokens, "exclude_first": plan.buffer.exclude_first}}
    results = []
    for c in plan.trains:
        run_dir = plan.out_dir / f"lambda_{c.lambda_int:g}" if plan.sweep and plan.out_dir else plan.out_dir
        results.append(train(c, source, crosscoder=cc_cfg, mlp=mlp if c.lambda_int > 0 else None, out_dir=run_dir,
                             resume=plan.resume, options=plan.options, data_id=data_id))
        if run_dir is not None and parallel.is_main:
            write_json(results[-1].final, run_dir / "final_metrics.json")
    if plan.out_dir is not None and parallel.is_main:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(plan.raw, plan.out_dir / "run_config.json")
        if plan.sweep:
            write_json([{"lambda_int": c.lambda_int, **r.final} for c, r in zip(plan.trains, results)],
                       plan.out_dir / "sweep.json")
    return results if plan.sweep else results[0]


def run_from_config(config: dict) -> TrainResult | list[TrainResult]:
    """Train from a run config (module docstring); the result, or a list of them for a λ sweep."""
    return run_plan(read_run_config(config))
