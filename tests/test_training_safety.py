"""Training failures lose nothing and say what happened (issue 16, items 6 and 7, and hardening).

On the code before the fix: huge but finite activations (1e34) made the loss infinite after
BatchTopK's threshold had already moved to ~1e33, and that state was saved as the "last good" one
(its eval L0 was 0) with a message blaming lr or λ; a mis-shaped batch mid-stream raised a raw
``torch.cat`` error and saved nothing; float64 activations failed inside ``addmm``; a second run in
the same ``out_dir`` could delete the first one's temporary checkpoint; damaged checkpoint files
raised raw library errors or loaded silently.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.optim.optimizer as optimizer_hooks

from crosscoder_lib.crosscoder.checkpoint import latest_training_state
from crosscoder_lib.crosscoder.model import CrosscoderConfig
from crosscoder_lib.crosscoder.persistence import load_crosscoder
from crosscoder_lib.crosscoder.training import NonFiniteError, RunFolderBusy, RunOptions, TrainConfig, train
from crosscoder_lib.crosscoder.training import progress as progress_mod
from crosscoder_lib.files import CheckpointError

HP = ["blocks.0.hook_resid_pre", "blocks.0.ln2.hook_normalized", "blocks.0.hook_resid_post"]
OPTIONS = RunOptions(progress=False, log_every=2, checkpoint_every=0)


def _acts(T=1024):
    g = torch.Generator().manual_seed(0)
    return torch.randn(T, 3, 16, generator=g) * torch.tensor([1.0, 5.0, 20.0])[None, :, None]


def _cc():
    return CrosscoderConfig(hookpoints=HP, d_model=16, n_features=64, k=3)


def _cfg(**kw):
    return TrainConfig(**({"n_steps": 10, "batch_size": 64, "lr": 3e-3, "n_norm_batches": 2} | kw))


def _clean_run(batches, steps):
    return train(_cfg(), batches, crosscoder=_cc(), stop_at_step=steps, options=OPTIONS).crosscoder


def test_huge_finite_activations_keep_the_last_good_state_and_name_the_data(tmp_path):
    batches = list(_acts(64 * 10).split(64))
    batches[5] = batches[5] * 1e34  # finite, but its squares overflow
    with pytest.raises(NonFiniteError) as err:
        train(_cfg(), batches, crosscoder=_cc(), out_dir=tmp_path, options=OPTIONS)
    msg = str(err.value)
    assert "step 5" in msg and "activations in the data" in msg and "nothing of this step was applied" in msg
    assert "checkpointed at" in msg
    kept = load_crosscoder(latest_training_state(tmp_path / "checkpoints"))
    good = _clean_run(batches[:5], 5)
    for k, v in good.state_dict().items():
        assert torch.equal(kept.state_dict()[k], v), k  # the BatchTopK threshold included
    kept.eval()
    with torch.no_grad():
        assert 1 < float((kept.encode(_acts(256)).val_BK != 0).sum(-1).float().mean()) < 10  # L0 near k = 3


def test_a_mis_shaped_batch_mid_stream_names_the_step_and_the_shape_and_saves(tmp_path):
    batches = list(_acts(700).split(90))
    batches[4] = torch.randn(90, 3, 15)
    with pytest.raises(ValueError) as err:
        train(_cfg(), batches, crosscoder=_cc(), out_dir=tmp_path, options=OPTIONS)
    msg = str(err.value)
    assert "batch 4 of the source" in msg and "(90, 3, 15)" in msg and "[B, 3, 16]" in msg
    # steps 0-4 read positions 0-319; step 5 needs source batch 4 (positions 360-449)
    assert "training stopped at step 5" in msg and "checkpointed at" in msg
    kept = latest_training_state(tmp_path / "checkpoints")
    assert json.loads((kept / "trainer_state.json").read_text())["step"] == 5
    good = _clean_run(list(_acts(700).split(90)), 5)
    assert torch.equal(load_crosscoder(kept).W_dec_HXD, good.W_dec_HXD)


def test_any_exception_in_the_loop_saves_the_completed_steps(tmp_path):
    class FlakySource:
        def __iter__(self):
            for i, b in enumerate(_acts(64 * 10).split(64)):
                if i == 7:
                    raise OSError(5, "the disk holding the activations went away")
                yield b

    with pytest.raises(OSError) as err:
        train(_cfg(), FlakySource(), crosscoder=_cc(), out_dir=tmp_path, options=OPTIONS)
    assert "went away" in str(err.value)
    kept = latest_training_state(tmp_path / "checkpoints")
    assert json.loads((kept / "trainer_state.json").read_text())["step"] == 7
    assert torch.equal(load_crosscoder(kept).W_dec_HXD, _clean_run(list(_acts(64 * 10).split(64)), 7).W_dec_HXD)


def test_a_failure_while_a_step_applies_its_update_saves_nothing(tmp_path):
    calls = []

    def fail_in_step_six(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("out of memory inside the update")

    handle = optimizer_hooks.register_optimizer_step_post_hook(fail_in_step_six)
    try:
        with pytest.raises(RuntimeError) as err:
            train(_cfg(), _acts(), crosscoder=_cc(), out_dir=tmp_path,
                  options=RunOptions(progress=False, checkpoint_every=3))
    finally:
        handle.remove()
    assert "nothing was saved" in str(err.value) and "step_00000003" in str(err.value)
    kept = latest_training_state(tmp_path / "checkpoints")
    assert json.loads((kept / "trainer_state.json").read_text())["step"] == 3


def test_a_second_run_in_the_same_out_dir_is_refused(tmp_path, monkeypatch):
    seen = []
    record = progress_mod.Progress.record

    def record_and_intrude(self, step, s, dead_fraction):
        record(self, step, s, dead_fraction)
        if step == 4:
            with pytest.raises(RunFolderBusy, match=r"in use by another training run \(process \d+"):
                train(_cfg(), _acts(), crosscoder=_cc(), out_dir=tmp_path, options=OPTIONS)
            seen.append(step)

    monkeypatch.setattr(progress_mod.Progress, "record", record_and_intrude)
    r = train(_cfg(), _acts(), crosscoder=_cc(), out_dir=tmp_path, options=RunOptions(progress=False, checkpoint_every=3))
    assert seen == [4] and r.step == 10 and load_crosscoder(tmp_path / "crosscoder") is not None


def test_other_float_dtypes_are_cast_and_other_dtypes_refused():
    a = train(_cfg(), _acts(), crosscoder=_cc(), options=OPTIONS)
    b = train(_cfg(), _acts().double(), crosscoder=_cc(), options=OPTIONS)  # documented cast to float32
    assert a.metrics == b.metrics and torch.equal(a.crosscoder.W_dec_HXD, b.crosscoder.W_dec_HXD)
    with pytest.raises(ValueError, match="dtype torch.int64; activations must be floating point"):
        train(_cfg(), _acts().long(), crosscoder=_cc(), options=OPTIONS)


@pytest.mark.parametrize("damage", ["flip_optimizer", "truncate_trainer_json", "flip_weights"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    train(_cfg(), _acts(), crosscoder=_cc(), out_dir=tmp_path, stop_at_step=4, options=OPTIONS)
    folder = latest_training_state(tmp_path / "checkpoints")
    name = {"flip_optimizer": "optimizer.safetensors", "truncate_trainer_json": "trainer_state.json",
            "flip_weights": "crosscoder.safetensors"}[damage]
    data = bytearray((folder / name).read_bytes())
    if damage.startswith("flip"):
        data[-3] ^= 0x08  # one bit of one value: the file stays valid safetensors
    else:
        data = data[:len(data) // 2]
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{name} does not match its checksum"):
        train(_cfg(), _acts(), crosscoder=_cc(), out_dir=tmp_path, options=OPTIONS)
