"""Evaluation: FVU/L0/dead fraction by definition, splicing, and loss recovered."""

from types import SimpleNamespace

import pytest
import torch
from builders import tiny_bridge

from crosscoder_lib.crosscoder.activations import codes_to_dense
from crosscoder_lib.crosscoder.model import Crosscoder, CrosscoderConfig, CrosscoderOutput
from crosscoder_lib.crosscoder.evaluation import (
    evaluate_reconstruction,
    splice_hooks,
    spliced_loss_recovered,
)
from crosscoder_lib.lm.hookpoints import paper_hookpoints
from crosscoder_lib.lm.patching import patched_losses, positions_replaced
from crosscoder_lib.interactions.mlp import apply_mlp, mlp_weights

HP = paper_hookpoints(2)




@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    return tiny_bridge(tmp_path_factory.mktemp("rts"), n_blocks=2, d_model=32, d_mlp=64,
                       context_len=32)


def test_reconstruction_metrics_follow_their_definitions():
    cc = Crosscoder(CrosscoderConfig(HP, 8, 40, activation="topk", k=3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 9, 8, generator=g) * torch.linspace(0.5, 4, 9)[None, :, None]
    cc.set_input_scale(x)
    ev = evaluate_reconstruction(cc, x, batch_size=64)  # streamed in batches
    with torch.no_grad():
        out = cc(x)
    err = (x - out.recon_BXD).double().pow(2).sum((0, 2))
    var = (x - x.mean(0)).double().pow(2).sum((0, 2))
    for i, h in enumerate(HP):
        assert ev.fvu_per_hookpoint[h] == pytest.approx(float(err[i] / var[i]), rel=1e-6)
    s2 = cc.input_scale_X.double() ** 2
    assert ev.fvu == pytest.approx(float((s2 * err).sum() / (s2 * var).sum()), rel=1e-6)
    assert ev.l0 == pytest.approx(3.0)
    fired = (codes_to_dense(out.codes, 40) > 0).any(0)
    assert ev.dead_fraction == pytest.approx(1 - fired.float().mean().item())
    assert ev.n_tokens == 300
    assert set(ev._asdict()) == {"fvu", "fvu_per_hookpoint", "l0", "dead_fraction", "n_tokens"}


def _grab(store, name):
    def hook(act, hook):
        store[name] = act.detach().clone()
    return hook


def test_splicing_resid_mid_replaces_the_residual_stream(bridge):
    toks = torch.randint(5, 60, (2, 6), generator=torch.Generator().manual_seed(0))
    seen = {}
    new = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(1))
    bridge.run_with_hooks(toks, fwd_hooks=splice_hooks(bridge, "blocks.1.hook_resid_mid", lambda a: new)
                          + [("blocks.1.hook_resid_post", _grab(seen, "post")),
                             ("blocks.1.ln2.hook_normalized", _grab(seen, "n2"))])
    n2 = torch.nn.functional.layer_norm(new, (32,), eps=1e-5)
    assert torch.allclose(seen["n2"], n2, atol=1e-5)
    # resid_post = spliced resid_mid + MLP(LN(spliced resid_mid))
    want = new + apply_mlp(seen["n2"], mlp_weights(bridge), 1)
    assert torch.allclose(seen["post"], want, atol=1e-4)
    # identity splicing changes nothing at any hookpoint
    clean = bridge(toks, return_type="loss")
    for h in HP:
        spliced = bridge.run_with_hooks(toks, return_type="loss", fwd_hooks=splice_hooks(bridge, h, lambda a: a.clone()))
        assert torch.allclose(spliced, clean, atol=1e-6), h


class _Oracle(torch.nn.Module):
    """A stand-in crosscoder whose reconstruction is ``factor · x``."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor
        self.cfg = SimpleNamespace(hookpoints=HP)
        self.W_dec_HXD = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return CrosscoderOutput(self.factor * x, None, None, None, None)


def test_loss_recovered_is_1_for_truth_and_0_for_zero(bridge):
    toks = [torch.randint(5, 60, (3, 10), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    perfect = spliced_loss_recovered(bridge, _Oracle(1.0), toks)
    assert perfect.baseline == "zero" and perfect.n_tokens == 2 * 3 * 8
    for h in HP:
        assert perfect.loss_splice[h] == pytest.approx(perfect.loss_clean, abs=1e-5)
        assert perfect.recovered[h] == pytest.approx(1.0, abs=1e-3)
    zero = spliced_loss_recovered(bridge, _Oracle(0.0), toks, hookpoints=HP[:3])
    assert set(zero.recovered) == set(HP[:3])
    for h in HP[:3]:
        assert zero.recovered[h] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="not read by this crosscoder"):
        spliced_loss_recovered(bridge, _Oracle(1.0), toks, hookpoints=["blocks.5.hook_resid_pre"])


def test_loss_recovered_of_a_real_crosscoder_is_finite(bridge):
    cc = Crosscoder(CrosscoderConfig(HP, 32, 64, activation="topk", k=8))
    toks = [torch.randint(5, 60, (2, 8), generator=torch.Generator().manual_seed(3))]
    res = spliced_loss_recovered(bridge, cc, toks, hookpoints=HP[-2:])
    assert all(torch.isfinite(torch.tensor(v)) for v in res.recovered.values())
    assert res._asdict()["loss_zero"].keys() == res.loss_splice.keys()


def test_patched_losses_average_predictions_after_bos(bridge):
    """The shared patched-loss loop: no hook is the clean loss, a hook that changes nothing too, a
    zeroed resid_post changes it; predictions from BOS are left out; no batch is an error."""
    toks = [torch.randint(5, 60, (2, 7), generator=torch.Generator().manual_seed(s)) for s in range(3)]

    def variants(tokens):
        yield "same", [("blocks.1.hook_resid_post", lambda act, hook: positions_replaced(act, act[:, 1:], 1))]
        yield "zero", [("blocks.1.hook_resid_post", lambda act, hook: positions_replaced(act, 0, 1))]

    out = patched_losses(bridge, toks, variants, start=1, max_batches=2)
    assert out.n_tokens == 2 * 2 * 5
    per_tok = torch.cat([bridge(t, return_type="loss", loss_per_token=True)[:, 1:].flatten() for t in toks[:2]])
    assert out.clean == pytest.approx(per_tok.mean().item(), rel=1e-6)
    assert out.patched["same"] == pytest.approx(out.clean, rel=1e-6)
    assert abs(out.patched["zero"] - out.clean) > 1e-3
    with pytest.raises(ValueError, match="no token batches"):
        patched_losses(bridge, [], variants, start=1)
