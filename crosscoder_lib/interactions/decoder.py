"""The crosscoder's decoder seen from the MLP inputs: rows, their neuron weights ``G`` and bias ``β``.

SPEC §3. For block ``l``, token ``t``, neuron ``n`` and feature ``v`` active at ``t``, the
**per-feature pre-activation contribution** is

    p[l, t, n, v] = a[t, v] · G_l[v, n],      G_l = W_dec[:, slot(l)] @ W_in_l   ([H, N])

(``slot(l)`` is the MLP-input hookpoint, ``ln2.hook_normalized``) and the neuron's pre-activation is
``z[l, t, n] = Σ_v p[l, t, n, v] + β_l[n]`` with ``β_l = b_dec[slot(l)] @ W_in_l + b_in_l``. The
bias ``β`` is *not* a feature and is never counted as one. ``W_dec_LHD`` and ``b_dec_LD`` are the
decoder rows and bias at each block's MLP input in the model's units (:func:`mlp_input_decoder`).
For another MLP kind, ``W_in`` is each of its ``input_weights()`` in turn (:mod:`.mlp`): a gated
MLP has ``p_gate`` and ``p_up`` (``G_gate``, ``G_up``, ``β_gate``, ``β_up``).
"""

from __future__ import annotations

import torch

from crosscoder_lib.interactions.mlp import AnyMLP
from crosscoder_lib.lm.hookpoints import mlp_input_slots


def mlp_input_decoder(crosscoder) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_dec_LHD, b_dec_LD)``: a crosscoder's decoder rows and bias at each block's MLP input, in model units.

    Slots come from ``mlp_input_slots(crosscoder.cfg.hookpoints)``; the input scale is divided out,
    so ``codes → Σ_v a_v W_dec_LHD[l, v] + b_dec_LD[l]`` is ``crosscoder.decode(codes)`` at that slot.
    ``W_dec_LHD`` is differentiable through the crosscoder's weights.
    """
    W_dec_LHD = crosscoder.decoder_slots_LHD(mlp_input_slots(crosscoder.cfg.hookpoints))
    return W_dec_LHD, mlp_input_bias(crosscoder)


def mlp_input_bias(crosscoder) -> torch.Tensor:
    """``b_dec_LD``: the crosscoder's decoder bias at each block's MLP input, in model units."""
    slots_t = torch.as_tensor(mlp_input_slots(crosscoder.cfg.hookpoints), device=crosscoder.b_dec_XD.device)
    return crosscoder.b_dec_XD[slots_t] / crosscoder.input_scale_X[slots_t, None]


def check_decoder(W_dec_LHD: torch.Tensor, mlp: AnyMLP) -> None:
    """A clear error unless ``W_dec_LHD`` holds ``[L, H, D]`` rows matching the MLP's blocks and width."""
    W_in_LDN = mlp.input_weights()[0]
    if W_dec_LHD.ndim != 3:
        raise ValueError(f"W_dec_LHD must be [L, H, D]; got shape {tuple(W_dec_LHD.shape)}")
    L, _, D = W_dec_LHD.shape
    if (L, D) != (W_in_LDN.shape[0], W_in_LDN.shape[1]):
        hint = (f"; these MLP weights hold {W_in_LDN.shape[0]} blocks: select the crosscoder's with "
                "mlp.for_blocks(hookpoint_blocks(crosscoder.cfg.hookpoints))" if W_in_LDN.shape[0] > L else "")
        raise ValueError(
            f"W_dec_LHD {tuple(W_dec_LHD.shape)} does not match the MLP's W_in {tuple(W_in_LDN.shape)}: "
            f"pass the decoder rows at the MLP-input slot of every block (L, H, D){hint}"
        )


def frozen(W: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A frozen MLP weight on ``like``'s device and dtype (the language model is never trained)."""
    return W.detach().to(device=like.device, dtype=like.dtype)


def input_products(W_dec_LHD: torch.Tensor, mlp: AnyMLP, workspace=None) -> tuple[torch.Tensor, ...]:
    """``G_m = W_dec_LHD @ W_m`` for each of the MLP kind's input matrices (standard: ``(G_in,)``).

    Differentiable in ``W_dec_LHD``; the language model's weights are frozen. ``workspace`` (a
    :class:`~crosscoder_lib.interactions.kernels.buffers.Workspace`) holds buffers to write
    detached products into, reused while nothing else holds them (a fresh ``[L, H, N]`` per
    decoder state is mapped and page-zeroed anew).
    """
    W_ms = [frozen(W_m, W_dec_LHD) for W_m in mlp.input_weights()]
    if workspace is None or (W_dec_LHD.requires_grad and torch.is_grad_enabled()):
        return tuple(torch.matmul(W_dec_LHD, W_m) for W_m in W_ms)
    L, H, _ = W_dec_LHD.shape
    return tuple(torch.matmul(W_dec_LHD, W_m, out=workspace.get(f"G{m}", (L, H, W_m.shape[2]), W_dec_LHD.dtype,
                                                                W_dec_LHD.device))
                 for m, W_m in enumerate(W_ms))


def neuron_weights(W_dec_LHD: torch.Tensor, mlp: AnyMLP) -> torch.Tensor:
    """``G_LHN[l] = W_dec_LHD[l] @ W_in_l``: feature ``v``'s pre-activation at neuron ``n`` per unit activation.

    ``W_dec_LHD`` holds the decoder rows at each block's MLP-input slot, in the model's units
    (:func:`mlp_input_decoder`). Differentiable in ``W_dec_LHD``; the language model's ``W_in`` is
    frozen.
    """
    check_decoder(W_dec_LHD, mlp)
    _one_input_matrix(mlp, "neuron_weights")
    (G_LHN,) = input_products(W_dec_LHD, mlp)
    return G_LHN


def _one_input_matrix(mlp, name: str) -> None:
    if len(mlp.input_weights()) != 1:
        raise TypeError(f"{name} is the one product of a standard MLP; a {mlp.kind} MLP has "
                        f"{len(mlp.input_weights())} input matrices: use input_products / bias_products")


def bias_products(b_dec_LD: torch.Tensor, mlp: AnyMLP) -> tuple[torch.Tensor, ...]:
    """``β_m = b_dec_LD @ W_m + b_m`` for each of the MLP kind's input matrices (standard: ``(β,)``)."""
    return tuple(torch.einsum("ld,ldn->ln", b_dec_LD, W_m.to(device=b_dec_LD.device, dtype=b_dec_LD.dtype))
                 + b_m.to(b_dec_LD) for W_m, b_m in zip(mlp.input_weights(), mlp.input_biases()))


def neuron_bias(b_dec_LD: torch.Tensor, mlp: AnyMLP) -> torch.Tensor:
    """``β_LN[l] = b_dec[slot(l)] @ W_in_l + b_in_l``: the part of the pre-activation that no feature carries."""
    _one_input_matrix(mlp, "neuron_bias")
    (beta_LN,) = bias_products(b_dec_LD, mlp)
    return beta_LN


def block_contributions(idx_BK: torch.Tensor, val_BK: torch.Tensor, G_HN: torch.Tensor) -> torch.Tensor:
    """One block's ``p_TNK[t, n, k] = val[t, k] · G[idx[t, k], n]`` (ids already checked)."""
    return (val_BK[:, :, None] * G_HN[idx_BK]).transpose(1, 2)
