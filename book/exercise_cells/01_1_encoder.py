import torch

from crosscoder_lib import check_encoder


def pre_activations_by_hand(x_BXD: torch.Tensor, scale_X: torch.Tensor, W_enc_XDH: torch.Tensor,
                            b_enc_H: torch.Tensor) -> torch.Tensor:
    """The crosscoder's pre-activations: one encoder matrix per hookpoint slot, summed over all slots.

        pre[b, h] = Σ_x Σ_d (s_x · x[b, x, d]) · W_enc[x, d, h] + b_enc[h]

    x_BXD: [B, X, D] raw activations at the X hookpoint slots; scale_X: [X] the per-slot input scale
    s_x (mean norm √D after scaling); W_enc_XDH: [X, D, H]; b_enc_H: [H]. Returns pre_BH: [B, H].

    Hint: one torch.einsum over the slot and model axes; broadcast the scale with scale_X[:, None].
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 1.1: write the acausal encoder (see the docstring above); then run "
                                  "this cell: its last line checks your function")
    x_scaled_BXD = x_BXD * scale_X[:, None]
    return torch.einsum("bxd,xdh->bh", x_scaled_BXD, W_enc_XDH) + b_enc_H


check_encoder(pre_activations_by_hand)
