"""Checkpoints: safetensors + JSON round trips; pickles and mis-shaped tensors refused."""

import pickle

import pytest
import torch

from crosscoder_lib.crosscoder.persistence import load_crosscoder, load_weights_into, save_crosscoder
from crosscoder_lib.files import CheckpointError, check_safetensors
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig
from crosscoder_lib.lm.hookpoints import paper_hookpoints

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
    save_crosscoder(cc, tmp_path / "cc", fold=False)
    back = load_crosscoder(tmp_path / "cc")
    assert back.cfg == cc.cfg
    for (n, a), (_, b) in zip(cc.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n


def test_roundtrip_folded_keeps_outputs(tmp_path):
    cc = _trained_like().eval()
    save_crosscoder(cc, tmp_path / "cc")  # folds by default
    back = load_crosscoder(tmp_path / "cc").eval()
    assert torch.equal(back.input_scale_X, torch.ones(5))
    assert not torch.equal(cc.input_scale_X, torch.ones(5))  # the saved model was not modified
    x = torch.randn(20, 5, 8) * torch.arange(1, 6)[None, :, None]
    a, b = cc(x), back(x)
    assert torch.equal(a.codes.idx_BK, b.codes.idx_BK)
    assert torch.allclose(a.recon_BXD, b.recon_BXD, rtol=1e-4, atol=1e-5)
    # loading also works from the weights file itself
    assert load_crosscoder(tmp_path / "cc" / "crosscoder.safetensors").cfg == cc.cfg


def test_pickles_are_refused(tmp_path):
    cc = _trained_like()
    torch.save(cc.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="zip archive.*never unpickles"):
        load_crosscoder(tmp_path / "model.pt")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"W_enc_XDH": [1, 2]}))
    with pytest.raises(CheckpointError, match="Python pickle"):
        check_safetensors(tmp_path / "raw.pkl")
    # a pickle under the expected file name is refused too
    folder = tmp_path / "disguised"
    save_crosscoder(cc, folder)
    (folder / "crosscoder.safetensors").write_bytes((tmp_path / "model.pt").read_bytes())
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_crosscoder(folder)


def test_other_shape_names_tensor_and_shapes(tmp_path):
    save_crosscoder(_trained_like(n_features=32), tmp_path / "small")
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
        load_crosscoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no crosscoder.safetensors"):
        load_crosscoder(tmp_path / "empty")
    save_crosscoder(_trained_like(), tmp_path / "cc")
    (tmp_path / "cc" / "crosscoder.json").unlink()
    with pytest.raises(CheckpointError, match="JSON config must sit beside"):
        load_crosscoder(tmp_path / "cc")


def test_short_truncated_and_corrupt_files_are_named_without_pickle_advice(tmp_path):
    """On the code before the fix a 2-byte file got pickle-conversion advice, a truncated file and
    corrupt JSON raised raw SafetensorError / JSONDecodeError, and a flipped bit loaded silently."""
    from crosscoder_lib.files import read_json, read_tensors, write_tensors

    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError) as err:
        read_tensors(tmp_path / "tiny.safetensors")
    assert "tiny.safetensors is truncated: 2 bytes" in str(err.value) and "torch.load" not in str(err.value)
    write_tensors({"x": torch.arange(10.0)}, tmp_path / "t.safetensors")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-7])
    with pytest.raises(CheckpointError, match=r"cut.safetensors is truncated or corrupt: its header describes "
                                              rf"{len(data)} bytes, the file holds {len(data) - 7}"):
        read_tensors(tmp_path / "cut.safetensors")
    (tmp_path / "bad.json").write_text('{"step": 3, "metr')
    with pytest.raises(CheckpointError, match="bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(CheckpointError, match="nowhere.json does not exist"):
        read_json(tmp_path / "nowhere.json")


def test_a_flipped_bit_in_a_saved_crosscoder_is_detected(tmp_path):
    save_crosscoder(_trained_like(), tmp_path / "cc")
    weights = tmp_path / "cc" / "crosscoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="crosscoder.safetensors does not match the checksum"):
        load_crosscoder(tmp_path / "cc")
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        load_weights_into(_trained_like(), tmp_path / "cc")


def test_writes_are_atomic_and_leave_no_temporary_file(tmp_path, monkeypatch):
    from crosscoder_lib import files

    files.write_json({"a": 1}, tmp_path / "x.json", durable=True)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "save_file", fail)
    with pytest.raises(OSError):
        files.write_tensors({"x": torch.ones(3)}, tmp_path / "x.json")  # a failed write replaces nothing
    assert files.read_json(tmp_path / "x.json") == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
