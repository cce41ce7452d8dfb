"""Training: config validation, determinism, resume, failure handling, λ > 0 path, command line."""

import json

import pytest
import torch

from crosscoder_lib.cli import main
from crosscoder_lib.crosscoder.checkpoint import latest_training_state
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.crosscoder.persistence import load_crosscoder
from crosscoder_lib.crosscoder.training import NonFiniteError, RunOptions, TrainConfig, train
from crosscoder_lib.crosscoder.training.loss import Objective, compute_loss

HP = ["blocks.0.hook_resid_pre", "blocks.0.ln2.hook_normalized", "blocks.0.hook_resid_post"]


def sparse_synthetic(T=2048, n_true=48, active=3, X=3, D=16, seed=0):
    """Activations that are exactly sparse sums of ``n_true`` ground-truth crosscoder features."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_true, X, D, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    idx = torch.stack([torch.randperm(n_true, generator=g)[:active] for _ in range(T)])
    val = torch.rand(T, active, generator=g) + 0.5
    a = torch.zeros(T, n_true).scatter_(1, idx, val)
    return torch.einsum("th,hxd->txd", a, dirs) * torch.tensor([1.0, 5.0, 20.0])[None, :, None]


def _cc_cfg(**kw):
    return CrosscoderConfig(**({"hookpoints": HP, "d_model": 16, "n_features": 64, "k": 3,
                                "dead_steps": 20} | kw))


def _tcfg(**kw):
    return TrainConfig(**({"n_steps": 40, "batch_size": 64, "lr": 3e-3} | kw))


def _opts(**kw):
    return RunOptions(**({"progress": False, "log_every": 5, "checkpoint_every": 10} | kw))


@pytest.fixture(scope="module")
def acts():
    return sparse_synthetic()


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="lr must be a positive"):
        TrainConfig(lr=-1e-4)
    with pytest.raises(ValueError, match=r"lambda_int \(λ\) must be >= 0"):
        TrainConfig(lambda_int=-1.0)
    with pytest.raises(ValueError, match="penalty_form"):
        TrainConfig(penalty_form="squared")
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    cfg = TrainConfig(n_steps=100, warmup_frac=0.1, decay_frac=0.2, lr=1.0)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    lrs = [cfg.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[50] == 1.0
    assert lrs[80] == 1.0 and lrs[99] == pytest.approx(0.05)  # linear decay to 0
    with pytest.raises(ValueError, match="lambda_warmup_frac must be in"):
        TrainConfig(lambda_warmup_frac=1.5)
    lam = TrainConfig(n_steps=10, lambda_int=100.0, lambda_warmup_frac=0.4)
    assert [lam.lambda_at(s) for s in range(6)] == [25.0, 50.0, 75.0, 100.0, 100.0, 100.0]
    assert TrainConfig(n_steps=10, lambda_int=100.0).lambda_at(0) == 100.0  # no warm-up by default
    with pytest.raises(ValueError, match="needs the model's MLP weights"):
        train(TrainConfig(lambda_int=10.0), torch.zeros(10, 3, 16), crosscoder=_cc_cfg(), options=_opts())


def test_learns_sparse_synthetic_data(acts, tmp_path):
    r = train(_tcfg(n_steps=300), acts, crosscoder=_cc_cfg(), out_dir=tmp_path,
              options=_opts(checkpoint_every=0, log_every=50))
    first, last = r.metrics[0], r.final
    assert last["fvu"] < 0.1 < first["fvu"]
    assert last["l0"] == pytest.approx(3.0)  # BatchTopK: k per token on average
    assert last["dead_fraction"] < 0.5
    # the exported model is folded and reproduces the in-memory one
    back = load_crosscoder(tmp_path / "crosscoder").eval()
    r.crosscoder.eval()
    assert torch.allclose(back(acts[:256]).recon_BXD, r.crosscoder(acts[:256]).recon_BXD, rtol=1e-3, atol=1e-3)
    assert json.loads((tmp_path / "train_config.json").read_text())["n_steps"] == 300


def test_auxk_revives_dead_features():
    """Half the features pushed far below threshold (b_enc = -3) on data with more true features
    than the dictionary: AuxK on raw pre-activations brings many back; without it none return,
    nor with the ReLU'd pre-activations of Gao et al. (which give such features no gradient)."""
    import crosscoder_lib.crosscoder.training.loss as training_mod
    from crosscoder_lib.crosscoder.activations import SparseCodes, auxk_codes

    data = sparse_synthetic(T=2048, n_true=160, active=4)

    def run(alpha, codes_fn=auxk_codes):
        cc = Crosscoder(_cc_cfg(n_features=64, k=4, aux_alpha=alpha))
        with torch.no_grad():
            cc.b_enc_H[:32] = -3.0
        old, training_mod.auxk_codes = training_mod.auxk_codes, codes_fn
        try:
            return train(_tcfg(n_steps=400), data, crosscoder=cc, options=_opts(checkpoint_every=0, log_every=400))
        finally:
            training_mod.auxk_codes = old

    def relu_codes(pre, dead, k):
        c = auxk_codes(pre, dead, k)
        return None if c is None else SparseCodes(c.idx_BK, c.val_BK.relu())

    assert run(0.0).final["dead_fraction"] == 0.5
    assert run(1 / 32, relu_codes).final["dead_fraction"] == 0.5
    assert run(1 / 32).final["dead_fraction"] < 0.45  # at least 3 of the 32 back within 400 steps


def test_auxk_is_weighed_against_the_fvu(acts):
    """loss = mse + α·Var(s x)·AuxK: α = 1/32 weighs AuxK against the FVU as in Gao et al., so the
    AuxK term does not shrink by X·D against the summed squared error (issue 4: without the factor
    AuxK was ~2000x too weak on the embedded model and revived nothing)."""
    cc = Crosscoder(_cc_cfg(aux_alpha=0.5))
    cc.set_input_scale(acts[:512])
    x = acts[:64]
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::2] = True
    s = compute_loss(Objective(cc), x, dead)
    var = (x * cc.input_scale_X[:, None]).var(0, unbiased=False).sum()
    assert float(s.aux.detach()) > 0
    assert torch.allclose(s.loss, s.mse + 0.5 * var * s.aux, rtol=1e-5)
    s_fast = compute_loss(Objective(cc), x, dead, with_fvu=False)  # same weight without the FVU pass
    assert torch.allclose(s_fast.loss, s.loss)
    s0 = compute_loss(Objective(cc), x, torch.zeros(64, dtype=torch.bool))  # nothing dead: no AuxK
    assert float(s0.aux.detach()) == 0 and torch.allclose(s0.loss, s0.mse)


def test_same_seed_gives_identical_metrics(acts):
    a = train(_tcfg(), acts, crosscoder=_cc_cfg(), options=_opts())
    b = train(_tcfg(), acts, crosscoder=_cc_cfg(), options=_opts())
    assert a.metrics == b.metrics
    assert torch.equal(a.crosscoder.W_dec_HXD, b.crosscoder.W_dec_HXD)
    c = train(_tcfg(seed=1), acts, crosscoder=_cc_cfg(), options=_opts())
    assert c.metrics != a.metrics


@pytest.mark.parametrize("source_kind", ["tensor", "list"])
def test_resume_equals_uninterrupted(acts, tmp_path, source_kind):
    # a list of odd-sized batches exercises re-batching and replay across passes
    source = acts if source_kind == "tensor" else list(acts[:700].split(90))
    full = train(_tcfg(), source, crosscoder=_cc_cfg(), out_dir=tmp_path / "full", options=_opts())
    part = train(_tcfg(), source, crosscoder=_cc_cfg(), out_dir=tmp_path / "split", stop_at_step=23,
                 options=_opts())
    assert part.step == 23 and latest_training_state(tmp_path / "split" / "checkpoints") is not None
    assert not (tmp_path / "split" / "crosscoder").exists()  # not finished yet
    rest = train(_tcfg(), source, crosscoder=_cc_cfg(), out_dir=tmp_path / "split", options=_opts())
    assert rest.step == 40
    assert rest.metrics == full.metrics
    for (n, a), (_, b) in zip(full.crosscoder.state_dict().items(), rest.crosscoder.state_dict().items()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="differs from the one checkpointed(.|\n)*train.lr"):
        train(_tcfg(lr=1e-2), source, crosscoder=_cc_cfg(), out_dir=tmp_path / "split", options=_opts())


def test_nan_stops_with_step_and_hookpoint_and_keeps_last_good(acts, tmp_path):
    batches = list(acts[:64 * 6].split(64))
    batches[4] = batches[4].clone()
    batches[4][7, 1, 3] = float("nan")
    with pytest.raises(NonFiniteError) as err:
        train(_tcfg(n_norm_batches=2), batches, crosscoder=_cc_cfg(), out_dir=tmp_path,
              options=_opts(checkpoint_every=2))
    msg = str(err.value)
    assert "step 4" in msg and "blocks.0.ln2.hook_normalized" in msg and "checkpoint" in msg
    kept_dir = latest_training_state(tmp_path / "checkpoints")
    meta = json.loads((kept_dir / "trainer_state.json").read_text())
    assert meta["step"] == 4
    # the kept state is the one after 4 good steps: identical to a clean 4-step run
    good = train(_tcfg(n_norm_batches=2), batches[:4], crosscoder=_cc_cfg(), stop_at_step=4,
                 options=_opts(checkpoint_every=2))
    kept = load_crosscoder(kept_dir)
    assert torch.equal(kept.W_dec_HXD, good.crosscoder.W_dec_HXD)
    assert torch.isfinite(kept.W_enc_XDH).all()


def test_empty_or_exhausted_source(acts):
    with pytest.raises(ValueError, match="empty"):
        train(_tcfg(), [], crosscoder=_cc_cfg(), options=_opts())
    one_shot = iter(list(acts[:64 * 3].split(64)))
    with pytest.raises(ValueError, match="one-shot iterator that ran out"):
        train(_tcfg(n_norm_batches=1), one_shot, crosscoder=_cc_cfg(), options=_opts())
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(_tcfg(), acts[:10], crosscoder=_cc_cfg(), options=_opts())


def test_relu_and_jumprelu_train(acts):
    for cfg in (_cc_cfg(activation="relu", sparsity_coeff=3e-3), _cc_cfg(activation="jumprelu", sparsity_coeff=1e-2,
                                                                          jumprelu_bandwidth=0.05)):
        r = train(_tcfg(n_steps=60), acts, crosscoder=cfg, options=_opts(checkpoint_every=0))
        assert r.final["fvu"] < r.metrics[0]["fvu"]
        assert r.final["l0"] < 64


def test_interaction_penalty_path():
    interactions = pytest.importorskip("crosscoder_lib.interactions.measures")
    from crosscoder_lib.interactions.mlp import MLPWeights

    g = torch.Generator().manual_seed(0)
    mlp = MLPWeights(torch.randn(1, 16, 24, generator=g) / 4, torch.zeros(1, 24),
                     torch.randn(1, 24, 16, generator=g) / 5, torch.zeros(1, 16), "relu")
    acts = sparse_synthetic(T=512)
    r = train(_tcfg(n_steps=10, lambda_int=5.0), acts, crosscoder=_cc_cfg(), mlp=mlp, options=_opts())
    assert {"penalty", "dominant_share", "lambda"} <= set(r.final)
    assert 0 < r.final["dominant_share"] <= 1
    assert interactions.interaction_penalty is not None
    # λ warm-up: the loop uses lambda_at(step), and the loss adds exactly that weight times the penalty
    w = train(_tcfg(n_steps=10, lambda_int=5.0, lambda_warmup_frac=1.0), acts,
              crosscoder=_cc_cfg(), mlp=mlp, options=_opts(log_every=1))
    assert [m["lambda"] for m in w.metrics] == [0.5 * (s + 1) for s in range(10)]
    for m in w.metrics:
        assert m["loss"] == pytest.approx(m["mse"] + m["lambda"] * m["penalty"], rel=1e-4)  # no dead: no AuxK


def test_command_line(tmp_path, monkeypatch):
    from crosscoder_lib.lm.loading import save_random_tinystories_like

    folder = save_random_tinystories_like(tmp_path / "model", n_blocks=2, d_model=16, d_mlp=32,
                                          context_len=16)
    config = {"model": str(folder), "hookpoints": "paper",
              "data": {"n_texts": 40, "context_len": 16, "batch_size": 8},
              "buffer": {"capacity_tokens": 256},
              "crosscoder": {"n_features": 32, "k": 4},
              "train": {"n_steps": 6, "batch_size": 32, "n_norm_batches": 1},
              "options": {"progress": False},
              "out_dir": str(tmp_path / "run")}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), "--set", "train.lr=0.001"]) == 0
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["step"] == 6 and 0 < final["fvu"]
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["train"]["lr"] == 0.001
    cc = load_crosscoder(tmp_path / "run" / "crosscoder")
    assert len(cc.cfg.hookpoints) == 9


def test_command_line_reads_a_local_instruct_file(tmp_path):
    """``data.dataset`` takes the chapters' DATASET forms: here a TinyStoriesInstruct-layout file (each
    example several lines, closed by <|endoftext|>); an unknown data key names the valid ones."""
    from crosscoder_lib.world import corpus
    from crosscoder_lib.applications import finetune
    from crosscoder_lib.lm.loading import save_random_tinystories_like
    from crosscoder_lib.crosscoder.training.run_config import run_from_config

    folder = save_random_tinystories_like(tmp_path / "model", n_blocks=2, d_model=16, d_mlp=32,
                                          context_len=16)
    texts = tmp_path / "instruct.txt"
    finetune.save_texts(corpus.generate_texts(30, seed=3), texts)
    config = {"model": str(folder), "data": {"dataset": str(texts), "n_texts": 20, "context_len": 16,
                                             "batch_size": 8},
              "buffer": {"capacity_tokens": 256}, "crosscoder": {"n_features": 32, "k": 4},
              "train": {"n_steps": 3, "batch_size": 32, "n_norm_batches": 1}, "options": {"progress": False}}
    assert run_from_config(config).metrics[-1]["step"] == 3
    with pytest.raises(ValueError, match="texts_file.*valid: dataset"):
        run_from_config(config | {"data": {"texts_file": str(texts)}})
