"""Checkpoints: safetensors + JSON round trips; pickles and mis-shaped tensors refused."""

import pickle

import pytest
import torch

from crosscoder_lib.checkpoint import (
    CheckpointError,
    check_safetensors,
    load_weights_into,
)
from crosscoder_lib.crosscoder import Crosscoder, CrosscoderConfig
from crosscoder_lib.hookpoints import paper_hookpoints

HP = paper_hookpoints(1)


def _trained_like(n_features=32, **kw):
    cc = Crosscoder(CrosscoderConfig(HP, 8, n_features, k=3, **kw))
    with torch.no_grad():
        for p in cc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cc.set_input_scale(torch.randn(100, 5, 8) * torch.arange(1, 6)[None, :, None])
    cc.activation.threshold.fill_(0.2)
    cc.activation.n_threshold_updates.fill_(7)
    return cc


def test_roundtrip_unfolded_is_exact(tmp_path):
    cc = _trained_like()
    cc.save(tmp_path / "cc", fold=False)
    back = Crosscoder.from_pretrained(tmp_path / "cc")
    assert back.cfg == cc.cfg
    for (n, a), (_, b) in zip(cc.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n


def test_roundtrip_folded_keeps_outputs(tmp_path):
    cc = _trained_like().eval()
    cc.save(tmp_path / "cc")  # folds by default
    back = Crosscoder.from_pretrained(tmp_path / "cc").eval()
    assert torch.equal(back.input_scale_X, torch.ones(5))
    assert not torch.equal(cc.input_scale_X, torch.ones(5))  # the saved model was not modified
    x = torch.randn(20, 5, 8) * torch.arange(1, 6)[None, :, None]
    a, b = cc(x), back(x)
    assert torch.equal(a.codes.idx_BK, b.codes.idx_BK)
    assert torch.allclose(a.recon_BXD, b.recon_BXD, rtol=1e-4, atol=1e-5)
    # loading also works from the weights file itself
    assert Crosscoder.from_pretrained(tmp_path / "cc" / "crosscoder.safetensors").cfg == cc.cfg


def test_pickles_are_refused(tmp_path):
    cc = _trained_like()
    torch.save(cc.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="zip archive.*never unpickles"):
        Crosscoder.from_pretrained(tmp_path / "model.pt")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"W_enc_XDH": [1, 2]}))
    with pytest.raises(CheckpointError, match="Python pickle"):
        check_safetensors(tmp_path / "raw.pkl")
    # a pickle under the expected file name is refused too
    folder = tmp_path / "disguised"
    cc.save(folder)
    (folder / "crosscoder.safetensors").write_bytes((tmp_path / "model.pt").read_bytes())
    with pytest.raises(CheckpointError, match="never unpickles"):
        Crosscoder.from_pretrained(folder)


def test_other_shape_names_tensor_and_shapes(tmp_path):
    _trained_like(n_features=32).save(tmp_path / "small")
    big = Crosscoder(CrosscoderConfig(HP, 8, 64, k=3))
    before = big.W_dec_HXD.detach().clone()
    with pytest.raises(CheckpointError) as err:
        load_weights_into(big, tmp_path / "small")
    msg = str(err.value)
    assert "'W_dec_HXD' has shape (32, 5, 8) in the checkpoint but the model expects (64, 5, 8)" in msg
    assert "'W_enc_XDH'" in msg and "'b_enc_H'" in msg
    assert torch.equal(big.W_dec_HXD, before)  # nothing half-loaded


def test_missing_pieces(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Crosscoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no crosscoder.safetensors"):
        Crosscoder.from_pretrained(tmp_path / "empty")
    _trained_like().save(tmp_path / "cc")
    (tmp_path / "cc" / "crosscoder.json").unlink()
    with pytest.raises(CheckpointError, match="JSON config must sit beside"):
        Crosscoder.from_pretrained(tmp_path / "cc")
