"""The command line: one ``--set`` parser, one entry point with subcommands, and user errors that
print a message and exit 2 without a traceback (issue 12; issue 16 item 9 and the config hardening).

On the code before the fix ``"hookpoints": "Paper"`` was split into one-letter hook names, a
``buffer`` typo raised ``TypeError: ActivationBuffer.__init__() got an unexpected keyword
argument``, and ``"lr": "3e-4"`` failed with ``'>' not supported between instances of 'str' and 'int'``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crosscoder_lib import cli
from crosscoder_lib.crosscoder.training.run_config import read_run_config
from crosscoder_lib.lm.loading import save_random_tinystories_like

REPO = Path(__file__).resolve().parents[1]


def _config(**kw):
    return {"model": "embedded:clean", "train": {"n_steps": 2}} | kw


@pytest.mark.parametrize("config,message", [
    (_config(hookpoints="Paper"), "hookpoints must be \"paper\" or a list of hook names, got 'Paper'"),
    (_config(trian={}), "unknown run-config key(s) ['trian']; valid: model, hookpoints, data, buffer"),
    (_config(buffer={"capacity_token": 256}), "unknown buffer key(s) ['capacity_token']; valid: capacity_tokens, "
                                              "exclude_first, cache_dir"),
    (_config(data={"n_text": 5}), "unknown data key(s) ['n_text']; valid: dataset, n_texts"),
    (_config(crosscoder={"n_feature": 5}), "unknown crosscoder key(s) ['n_feature']; valid: hookpoints"),
    (_config(train={"n_steps": 2.5}), "TrainConfig.n_steps must be an integer, got 2.5"),
    (_config(train={"lr": "fast"}), "TrainConfig.lr must be a number, got 'fast'"),
    (_config(train={"device": "cuda"}), "train.device is a run option"),
    (_config(options={"progress": "no"}), "RunOptions.progress must be true or false, got 'no'"),
    (_config(train={"lambda_int": []}), "train.lambda_int is an empty list"),
    ({"train": {}}, "the run config needs \"model\""),
])
def test_run_config_errors_name_the_key_and_what_is_valid(config, message):
    with pytest.raises(ValueError) as err:
        read_run_config(config)
    assert message in str(err.value)


def test_json_typed_values_are_coerced_by_field_type():
    plan = read_run_config(_config(train={"n_steps": 1e3, "lr": "3e-4", "adam_betas": [0.9, "0.99"]},
                                   buffer={"capacity_tokens": "2048"}))
    (cfg,) = plan.trains
    assert (cfg.n_steps, cfg.lr, cfg.adam_betas) == (1000, 3e-4, (0.9, 0.99)) and type(cfg.n_steps) is int
    assert plan.buffer.capacity_tokens == 2048


def test_set_is_one_parser_for_every_dotted_key():
    config = cli.apply_assignments(_config(), [cli.assignment(a) for a in (
        "train.lr=3e-4", "crosscoder.k=32", "options.device=cuda", "data.dataset=stories.txt",
        "train.lambda_int=[0, 10]", "resume=false")])
    assert config["train"] == {"n_steps": 2, "lr": 3e-4, "lambda_int": [0, 10]}
    assert config["crosscoder"] == {"k": 32} and config["options"] == {"device": "cuda"}
    assert config["data"]["dataset"] == "stories.txt" and config["resume"] is False
    with pytest.raises(ValueError, match="train.lr is 0.0003, not a section"):
        cli.apply_assignments(config, [cli.assignment("train.lr.x=1")])


@pytest.mark.parametrize("argv,message", [
    (["train", "missing.json"], "cannot read the run config missing.json"),
    (["train", "{bad}"], "is not valid JSON"),
    (["train", "{hp}"], "hookpoints must be \"paper\""),
    (["train", "{ok}", "--set", "buffer.capacity_token=1"], "unknown buffer key(s) ['capacity_token']"),
])
def test_user_errors_print_a_message_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    Path("bad.json").write_text("{\"model\": ")
    Path("hp.json").write_text(json.dumps(_config(hookpoints="Paper")))
    Path("ok.json").write_text(json.dumps(_config()))
    argv = [a.format(bad="bad.json", hp="hp.json", ok="ok.json") for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("crosscoder train: error: ") and message in err and "Traceback" not in err


def test_bad_set_syntax_and_unknown_commands_are_argparse_errors(capsys):
    for argv in (["train", "x.json", "--set", "lr"], ["trian", "x.json"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


def test_the_console_commands_exit_2_without_a_traceback(tmp_path):
    """Through a real process: ``python -m crosscoder_lib.cli`` and the ``crosscoder-train`` alias."""
    (tmp_path / "run.json").write_text(json.dumps(_config(hookpoints="Paper")))
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for code in ("from crosscoder_lib.cli import main; raise SystemExit(main())",
                 "import sys; sys.argv[0] = 'crosscoder-train'; from crosscoder_lib.cli import train_alias; "
                 "raise SystemExit(train_alias())"):
        args = [sys.executable, "-c", code] + (["train"] if "main()" in code else []) + [str(tmp_path / "run.json")]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "hookpoints must be" in proc.stderr and "Traceback" not in proc.stderr


def test_train_command_runs_and_resumes(tmp_path, capsys):
    folder = save_random_tinystories_like(tmp_path / "model", n_blocks=1, d_model=16, d_mlp=32, context_len=16)
    config = {"model": str(folder), "data": {"n_texts": 30, "context_len": 16, "batch_size": 8},
              "buffer": {"capacity_tokens": 256}, "crosscoder": {"n_features": 32, "k": 4},
              "train": {"n_steps": 4, "batch_size": 32, "n_norm_batches": 1},
              "options": {"progress": False, "log_every": 2}, "out_dir": str(tmp_path / "run")}
    (tmp_path / "run.json").write_text(json.dumps(config))
    assert cli.main(["train", str(tmp_path / "run.json"), "--set", "train.n_steps=2"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    # the same folder with more steps is another run (the lr schedule changed): refused, exit 2
    assert cli.main(["train", str(tmp_path / "run.json")]) == 2
    assert "train.n_steps: checkpoint 2, this run 4" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "run.json"), "--set", "resume=false"]) == 0
