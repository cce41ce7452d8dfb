"""Saving and loading a crosscoder: its weights as safetensors, its config as JSON.

Layout of a crosscoder folder (:func:`save_crosscoder`)::

    crosscoder.safetensors   parameters and buffers (state_dict names)
    crosscoder.json          {"format", "config": CrosscoderConfig fields, "input_scale_folded",
                              "weights_sha256"}

Exported crosscoders are folded (the input scale moved into the weights, see
:meth:`~crosscoder_lib.crosscoder.model.Crosscoder.fold_input_scale`); training checkpoints
(:mod:`crosscoder_lib.crosscoder.checkpoint`) save them unfolded so a resumed run continues bit for
bit. Only safetensors and JSON are ever read (:mod:`crosscoder_lib.files`), and loading checks the
weights against ``weights_sha256`` (folders written before it existed load without the check), so a
flipped bit is an error naming the file, not a silently different model. Each file is written
atomically; :func:`save_crosscoder` into a fresh folder plus
:func:`crosscoder_lib.files.replace_folder` makes the whole folder atomic (what training does).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.files import (
    CheckpointError,
    check_safetensors,
    load_state_checked,
    read_json,
    read_tensors,
    sha256_file,
    write_json,
    write_tensors,
)

FORMAT = "crosscoder_lib.crosscoder/1"
WEIGHTS_FILE = "crosscoder.safetensors"
CONFIG_FILE = "crosscoder.json"


def save_crosscoder(crosscoder, folder: str | os.PathLike, *, fold: bool = True) -> Path:
    """Write a crosscoder's weights (safetensors) and config (JSON) into ``folder``.

    ``fold``: fold the input scale into the written weights (``crosscoder`` itself is unchanged).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in crosscoder.state_dict().items()}
    if fold:
        s_X = state["input_scale_X"]
        state["W_enc_XDH"] *= s_X[:, None, None]
        state["W_dec_HXD"] /= s_X[None, :, None]
        state["b_dec_XD"] /= s_X[:, None]
        state["input_scale_X"] = torch.ones_like(s_X)
    write_tensors(state, folder / WEIGHTS_FILE)
    write_json({"format": FORMAT, "config": crosscoder.cfg.to_dict(), "input_scale_folded": fold,
                "weights_sha256": sha256_file(folder / WEIGHTS_FILE)}, folder / CONFIG_FILE)
    return folder


def _weights_path(path: Path) -> tuple[Path, Path]:
    """(weights file, config file) for a crosscoder folder or its weights file."""
    if path.is_dir():
        weights, config = path / WEIGHTS_FILE, path / CONFIG_FILE
        if not weights.exists():
            found = sorted(p.name for p in path.iterdir())
            raise CheckpointError(f"{path} holds no {WEIGHTS_FILE} (found {found}); pass a folder "
                                  f"written by save_crosscoder or training")
        return weights, config
    if path.is_file():
        check_safetensors(path)
        return path, path.with_name(CONFIG_FILE)
    raise CheckpointError(f"no checkpoint at {path}")


def _read_checked(weights: Path, config: Path, device) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config JSON, tensors) of a crosscoder folder, the weights checked against their checksum."""
    tensors = read_tensors(weights, device=device)
    if not config.exists():
        raise CheckpointError(f"{config} is missing: the JSON config must sit beside {weights.name}")
    meta = read_json(config)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{config} has format {meta.get('format')!r}, expected {FORMAT!r}")
    want = meta.get("weights_sha256")
    if want is not None and sha256_file(weights) != want:
        raise CheckpointError(f"{weights} does not match the checksum in {config.name}: the file was "
                              "damaged (flipped bits) or replaced; restore it or save the crosscoder again")
    return meta, tensors


def load_crosscoder(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A :class:`~crosscoder_lib.crosscoder.model.Crosscoder` from a folder (or weights file) written by
    :func:`save_crosscoder`."""
    weights, config = _weights_path(Path(path))
    meta, tensors = _read_checked(weights, config, device)
    model = Crosscoder(CrosscoderConfig.from_dict(meta["config"])).to(device)
    load_state_checked(model, tensors, f"checkpoint {weights}")
    return model


def load_weights_into(crosscoder, path: str | os.PathLike) -> None:
    """Load a saved crosscoder's tensors into an existing ``crosscoder`` (shapes and checksum checked)."""
    weights, config = _weights_path(Path(path))
    if config.exists():
        _, tensors = _read_checked(weights, config, crosscoder.W_dec_HXD.device)
    else:
        tensors = read_tensors(weights, device=crosscoder.W_dec_HXD.device)
    load_state_checked(crosscoder, tensors, f"checkpoint {weights}")
