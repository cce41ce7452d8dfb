"""The paper's hookpoint layout and hook-name validation."""

import random

import pytest

from crosscoder_lib.lm.hookpoints import (
    hook_block,
    hookpoint_blocks,
    last_block_needed,
    mlp_input_slots,
    paper_hookpoints,
    resid_mid_slots,
    validate_hookpoints,
)


def test_paper_layout_4_blocks():
    hp = paper_hookpoints(4)
    assert len(hp) == 17
    assert hp[:4] == ["blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized",
                      "blocks.0.hook_resid_mid", "blocks.0.ln2.hook_normalized"]
    assert hp[-1] == "blocks.3.hook_resid_post"
    assert mlp_input_slots(hp) == [3, 7, 11, 15]  # slot 4l+3, SPEC §2
    assert resid_mid_slots(hp) == [2, 6, 10, 14]
    assert last_block_needed(hp) == 3
    assert len(paper_hookpoints(1)) == 5


def test_slots_follow_block_order_not_list_order():
    hp = paper_hookpoints(3)
    random.Random(0).shuffle(hp)
    slots = mlp_input_slots(hp)
    assert [hook_block(hp[s]) for s in slots] == [0, 1, 2]
    assert all(hp[s].endswith("ln2.hook_normalized") for s in slots)


def test_bad_layouts():
    with pytest.raises(ValueError, match="n_blocks"):
        paper_hookpoints(0)
    with pytest.raises(ValueError, match="MLP-input"):
        mlp_input_slots(["blocks.0.hook_resid_pre"])
    assert last_block_needed(["ln_final.hook_normalized", "blocks.1.hook_resid_pre"]) is None


def test_unknown_hook_lists_valid_names():
    valid = paper_hookpoints(2)
    with pytest.raises(ValueError) as err:
        validate_hookpoints(["blocks.0.hook_resid_pre", "blocks.0.ln2.hook_normalised"], valid)
    msg = str(err.value)
    assert "blocks.0.ln2.hook_normalised" in msg  # names the culprit
    assert "did you mean ['blocks.0.ln2.hook_normalized'" in msg  # closest match
    assert all(v in msg for v in valid)  # and every valid name
    with pytest.raises(ValueError, match="duplicate"):
        validate_hookpoints(["blocks.0.hook_resid_pre"] * 2, valid)
    with pytest.raises(ValueError, match="empty"):
        validate_hookpoints([], valid)
    assert validate_hookpoints(valid[:3], valid) == valid[:3]


def test_validate_against_a_model():
    class FakeModel:  # anything with a hook_dict, as a TransformerBridge has
        hook_dict = {h: None for h in paper_hookpoints(1)}

    with pytest.raises(ValueError, match="blocks.0.hook_resid_pre"):
        validate_hookpoints(["blocks.7.hook_resid_pre"], FakeModel())


def test_paper_hookpoints_window_of_a_deeper_model():
    h = paper_hookpoints(4, first_block=8)
    assert h[0] == "blocks.8.hook_resid_pre" and h[-1] == "blocks.11.hook_resid_post" and len(h) == 17
    assert hookpoint_blocks(h) == [8, 9, 10, 11]
    assert mlp_input_slots(h) == [3, 7, 11, 15]
    assert paper_hookpoints(4, first_block=0) == paper_hookpoints(4)
    with pytest.raises(ValueError, match="first_block"):
        paper_hookpoints(4, first_block=-1)
