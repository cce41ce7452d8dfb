"""One to_dict/from_dict for every config dataclass, with values coerced by field type."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crosscoder_lib.crosscoder.jsonconfig import ConfigError
from crosscoder_lib.crosscoder.model import CrosscoderConfig
from crosscoder_lib.crosscoder.training import RunOptions, TrainConfig
from crosscoder_lib.crosscoder.training.run_config import BufferConfig, DataConfig

HP = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]


@pytest.mark.parametrize("cls,d", [
    (CrosscoderConfig, {"hookpoints": HP, "d_model": 8, "n_features": 32, "aux_k": None}),
    (TrainConfig, {"n_steps": 7, "adam_betas": [0.8, 0.9]}),
    (RunOptions, {"device": "cuda", "wandb_run_name": "x"}),
    (DataConfig, {"dataset": "a.txt"}),
    (BufferConfig, {"cache_dir": "/tmp/c"}),
])
def test_every_config_round_trips_through_json(cls, d):
    cfg = cls.from_dict(d)
    assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_values_are_coerced_or_rejected_with_the_field_named():
    cfg = CrosscoderConfig.from_dict({"hookpoints": tuple(HP), "d_model": "8", "n_features": 3.2e1,
                                      "k": np.int64(4), "aux_alpha": "0.5", "aux_k": "3"})
    assert (cfg.hookpoints, cfg.d_model, cfg.n_features, cfg.k, cfg.aux_alpha, cfg.aux_k) == (HP, 8, 32, 4, 0.5, 3)
    assert all(type(v) is int for v in (cfg.d_model, cfg.n_features, cfg.k, cfg.aux_k))
    assert TrainConfig(lambda_int=5).lambda_int == 5.0 and type(TrainConfig(lambda_int=5).lambda_int) is float
    for bad, message in [({"n_features": True}, "n_features must be an integer, got True"),
                         ({"n_features": 32.5}, "n_features must be an integer, got 32.5"),
                         ({"train_dec_bias": 1}, "train_dec_bias must be true or false, got 1"),
                         ({"activation": 3}, "activation must be a string, got 3"),
                         ({"aux_k": "many"}, "aux_k must be an integer or null, got 'many'")]:
        with pytest.raises(ConfigError, match=message):
            CrosscoderConfig.from_dict({"hookpoints": HP, "d_model": 8, "n_features": 32} | bad)
    with pytest.raises(ConfigError, match=r"adam_betas must be a list of 2 \(a number, a number\)"):
        TrainConfig(adam_betas=(0.9,))


def test_a_string_is_not_a_list_of_hook_names():
    with pytest.raises(ConfigError, match="hookpoints must be a list of hook names, got the string 'paper'"):
        CrosscoderConfig(hookpoints="paper", d_model=8, n_features=32)


def test_unknown_and_missing_keys():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field\(s\) \['progress'\]; valid: n_steps, "
                                          r"batch_size.*run options"):
        TrainConfig.from_dict({"progress": False})
    with pytest.raises(ConfigError, match="missing 1 required positional argument: 'n_features'"):
        CrosscoderConfig.from_dict({"hookpoints": HP, "d_model": 8})
