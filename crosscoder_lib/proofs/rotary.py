"""Rotary position embeddings (RoPE) as Llama-family models apply them, in float64.

Hugging Face's convention (``rotate_half``): the ``E = d_head`` coordinates of a query or key at
position ``s`` pair up as ``(e, e + E/2)``, and pair ``e`` turns by the angle ``s·ω_e`` with
``ω_e = θ^(−2e/E)``::

    rot_s(x) = x·cos(sω) + rotate_half(x)·sin(sω),    rotate_half(x) = (−x[E/2:], x[:E/2])

(``cos``/``sin`` repeated over both halves). Each ``rot_s`` is a rotation, so it keeps norms, and
``rot_t(q)·rot_s(k) = q·rot_{s−t}(k)``: a score depends on the two positions only through their
offset. Queries and keys are rotated after their projection (and bias), values never.

θ comes from the Hugging Face config (``rope_parameters["rope_theta"]``, or ``rope_theta`` in older
configs): SmolLM2-135M uses 100000. The bridge's ``cfg.rotary_base`` says 10000 for it, a default
the model never reads, so it is not used here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

F64 = torch.float64


class Rotary(NamedTuple):
    """RoPE over all ``d_head`` coordinates of every query and key head, base ``theta``."""

    theta: float
    d_head: int

    def frequencies(self, device=None) -> torch.Tensor:
        """``ω_e = θ^(−2e/E)`` for ``e < E/2`` (float64)."""
        e = torch.arange(0, self.d_head, 2, dtype=F64, device=device)
        return 1.0 / self.theta ** (e / self.d_head)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``rot_s(x)`` for ``x`` ``[..., S, E]`` at ``positions`` ``[S]`` (default ``0 … S−1``; any
        real offsets, negative ones included)."""
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        angle = positions.to(F64)[:, None] * self.frequencies(x.device)  # [S, E/2]
        angle = torch.cat([angle, angle], -1)
        half = self.d_head // 2
        rotated_half = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * angle.cos().to(x.dtype) + rotated_half * angle.sin().to(x.dtype)


def rotary_of(bridge) -> Rotary | None:
    """The bridge's RoPE (None when its positions are not rotary), with θ from the Hugging Face config.

    Raises a ``ValueError`` for what this module does not model: frequency scaling (a ``rope_type``
    other than ``"default"``), partial rotation (``rotary_dim < d_head``) or GPT-J's interleaved pairs.
    """
    cfg = bridge.cfg
    if getattr(cfg, "positional_embedding_type", None) != "rotary":
        return None
    hf = getattr(getattr(bridge, "original_model", None), "config", None)
    params = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(hf, "rope_theta", None))
    if theta is None:
        raise ValueError("rotary positions need θ from the Hugging Face config (bridge.original_model.config."
                         "rope_parameters['rope_theta'] or .rope_theta); this bridge exposes neither. The bridge's "
                         "cfg.rotary_base is not the model's value for every checkpoint, so it is not used")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"RoPE type {rope_type!r} rescales its frequencies; crosscoder_lib.proofs.rotary models "
                         "the default type only")
    d_head = cfg.d_head
    partial = getattr(hf, "partial_rotary_factor", 1.0)
    if (cfg.rotary_dim or d_head) != d_head or partial != 1.0 or getattr(cfg, "rotary_adjacent_pairs", False):
        raise ValueError(f"rotation of {cfg.rotary_dim} of {d_head} coordinates (partial factor {partial}, adjacent "
                         f"pairs {getattr(cfg, 'rotary_adjacent_pairs', False)}) is not modelled: "
                         "crosscoder_lib.proofs.rotary rotates every coordinate in rotate_half pairs (Llama)")
    return Rotary(float(theta), int(d_head))
