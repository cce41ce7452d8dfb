"""Data-parallel training (``crosscoder_lib.crosscoder.distributed``) on CPU with gloo and 2 processes equals
one process with the same global batch and seed, within float round-off.

Tolerance: every weight tensor within ``1e-5`` of its largest entry, every logged metric within a
relative ``1e-5``. Why not bit for bit: the global batch's sums (gradients, the AuxK and FVU
normalisers, the metrics) are formed as two half-batch sums added together instead of one sum, and
harvested activations come from forwards over half the sequences, which changes the order of
float32 additions (relative round-off ~1e-7 per operation). Measured on the 2-core CPU: worst
weight gap 3.4e-7 of the tensor's largest entry (tensor source, 30 steps) and 2.3e-7 (command
line, 12 steps per λ), worst metric gap 2.5e-7 relative, BatchTopK thresholds identical: the
tolerance leaves a factor ~30. A wrong reduction moves the weights far outside it (measured by
swapping one in: per-shard BatchTopK 1.3, per-shard AuxK/FVU normaliser 0.27, per-shard
dead-feature tracker 0.32 of the largest entry).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crosscoder_lib.crosscoder import distributed
from crosscoder_lib.files import read_tensors, write_tensors
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.persistence import load_crosscoder
from crosscoder_lib.lm.loading import save_random_tinystories_like
from crosscoder_lib.interactions.mlp import MLPWeights
from crosscoder_lib.cli import main
from crosscoder_lib.crosscoder.training import RunOptions, TrainConfig, train

HP = ["blocks.0.hook_resid_pre", "blocks.0.ln2.hook_normalized", "blocks.0.hook_resid_post"]
RTOL_WEIGHTS = 1e-5
RTOL_METRICS = 1e-5
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _world():
    """Sparse activations (3 hookpoints, d_model 16) and a one-block ReLU MLP for the penalty."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(48, 3, 16, generator=g), dim=-1)
    a = torch.zeros(1024, 48).scatter_(1, torch.randint(0, 48, (1024, 3), generator=g),
                                       torch.rand(1024, 3, generator=g) + 0.5)
    acts = torch.einsum("th,hxd->txd", a, dirs) * torch.tensor([1.0, 5.0, 20.0])[None, :, None]
    mlp = MLPWeights(torch.randn(1, 16, 24, generator=g) / 4, torch.zeros(1, 24),
                     torch.randn(1, 24, 16, generator=g) / 5, torch.zeros(1, 16), "relu")
    return acts, mlp


def _configs(lam: float):
    # dead_steps=3: AuxK (and its global normaliser) is active from step 3 on.
    cc = CrosscoderConfig(hookpoints=HP, d_model=16, n_features=64, k=3, dead_steps=3)
    tc = TrainConfig(n_steps=30, batch_size=64, lr=3e-3, lambda_int=lam)
    return cc, tc


OPTIONS = RunOptions(progress=False, log_every=5, checkpoint_every=0)


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        parallel = distributed.data_parallel()
        assert isinstance(parallel, distributed.DataParallel) and parallel.world_size == 2
        acts, mlp = _world()
        for lam in (0.0, 5.0):
            cc_cfg, tcfg = _configs(lam)
            # stopped at step 12 and resumed from rank 0's checkpoint, read by both ranks
            ckpt = Path(out) / f"run_{lam:g}"
            train(tcfg, acts, crosscoder=cc_cfg, mlp=mlp, out_dir=ckpt, stop_at_step=12, options=OPTIONS)
            r = train(tcfg, acts, crosscoder=cc_cfg, mlp=mlp, out_dir=ckpt, options=OPTIONS)
            assert type(r.crosscoder.activation).__name__ == "BatchTopK"  # the sharded one is swapped out
            write_tensors(r.crosscoder.state_dict(), Path(out) / f"rank{rank}_lambda{lam:g}.safetensors")
            if rank == 0:
                (Path(out) / f"metrics_lambda{lam:g}.json").write_text(json.dumps(r.metrics))
        try:
            train(TrainConfig(batch_size=63, n_steps=1), acts, crosscoder=_configs(0.0)[0], options=OPTIONS)
        except ValueError as err:
            (Path(out) / f"error{rank}.txt").write_text(str(err))
    finally:
        dist.destroy_process_group()


def _assert_close_metrics(single: list[dict], ddp: list[dict]) -> None:
    assert [m["step"] for m in single] == [m["step"] for m in ddp]
    for a, b in zip(single, ddp):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=RTOL_METRICS, abs=1e-7), (a["step"], k, a[k], b[k])


def _assert_close_weights(single: dict, ddp: dict) -> float:
    """Every tensor within ``RTOL_WEIGHTS`` of its largest entry; returns the worst relative gap."""
    assert single.keys() == ddp.keys()
    worst = 0.0
    for k in single:
        if not single[k].numel():
            continue
        a, b = single[k].double(), ddp[k].double()
        rel = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
        assert rel <= RTOL_WEIGHTS, f"{k}: differs by {rel:.3g} of its largest entry > {RTOL_WEIGHTS}"
        worst = max(worst, rel)
    return worst


def test_two_gloo_processes_equal_one_process(tmp_path):
    """Tensor source, BatchTopK with AuxK, λ = 0 and λ = 5, stop-and-resume under DDP."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    acts, mlp = _world()
    for lam in (0.0, 5.0):
        cc_cfg, tcfg = _configs(lam)
        r = train(tcfg, acts, crosscoder=cc_cfg, mlp=mlp, options=OPTIONS)
        rank0 = read_tensors(tmp_path / f"rank0_lambda{lam:g}.safetensors")
        rank1 = read_tensors(tmp_path / f"rank1_lambda{lam:g}.safetensors")
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # ranks never drift apart
        assert r.final["dead_fraction"] > 0  # AuxK was exercised
        _assert_close_weights({k: v for k, v in r.crosscoder.state_dict().items()}, rank0)
        _assert_close_metrics(r.metrics, json.loads((tmp_path / f"metrics_lambda{lam:g}.json").read_text()))
    for rank in (0, 1):
        msg = (tmp_path / f"error{rank}.txt").read_text()
        assert "batch_size=63" in msg and "multiple of 2" in msg


def test_torchrun_command_line_lambda_sweep_equals_one_process(tmp_path):
    """The same run-config file under ``torchrun --nproc_per_node 2`` and in one process: sharded
    harvesting (token batches of 5 sequences: one rank's block is padded), a λ sweep [0, 10]."""
    model = save_random_tinystories_like(tmp_path / "model", n_blocks=2, d_model=16, d_mlp=32, context_len=16)
    config = {"model": str(model), "hookpoints": "paper",
              "data": {"n_texts": 40, "context_len": 16, "batch_size": 5},
              "buffer": {"capacity_tokens": 256},
              "crosscoder": {"n_features": 32, "k": 4, "dead_steps": 3},
              "train": {"n_steps": 12, "batch_size": 32, "lr": 1e-3, "n_norm_batches": 1, "lambda_int": [0, 10]},
              "options": {"progress": False, "log_every": 4, "checkpoint_every": 0}}
    for name in ("single", "ddp"):
        Path(tmp_path, f"{name}.json").write_text(json.dumps(config | {"out_dir": str(tmp_path / name)}))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), "-m", "crosscoder_lib.cli", "train",
                           str(tmp_path / "ddp.json")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert main(["train", str(tmp_path / "single.json")]) == 0
    single = json.loads((tmp_path / "single" / "sweep.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "sweep.json").read_text())
    assert [r["lambda_int"] for r in ddp] == [0, 10] and "dominant_share" in ddp[1]
    _assert_close_metrics(single, ddp)
    for lam in ("0", "10"):
        a = load_crosscoder(tmp_path / "single" / f"lambda_{lam}" / "crosscoder").state_dict()
        b = load_crosscoder(tmp_path / "ddp" / f"lambda_{lam}" / "crosscoder").state_dict()
        _assert_close_weights(a, b)
    assert not (tmp_path / "ddp" / "rank_1").exists()  # only rank 0 writes
