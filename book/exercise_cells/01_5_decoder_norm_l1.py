import torch

from crosscoder_lib import check_decoder_norm_l1


def relu_l1_penalty(a_BH: torch.Tensor, W_dec_HXD: torch.Tensor, coeff: float) -> torch.Tensor:
    """The sparsity penalty of a ReLU crosscoder: an L1 on the activations, weighted by decoder norms.

        penalty = coeff · mean over b of Σ_v a[b, v] · Σ_x ‖W_dec[v, x]‖

    (one norm per hookpoint slot, summed over the slots). Without the weights the crosscoder could
    shrink a and grow W_dec for free. a_BH: [B, H] activations (≥ 0); W_dec_HXD: [H, X, D];
    coeff: the penalty's weight. Returns a scalar tensor, differentiable in a_BH and W_dec_HXD.

    Hint: W_dec_HXD.norm(dim=-1) is [H, X].
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 1.5: write the decoder-norm-weighted L1 penalty (see the docstring "
                                  "above); then run this cell: its last line checks your function")
    dec_norm_H = W_dec_HXD.norm(dim=-1).sum(-1)
    return coeff * (a_BH * dec_norm_H).sum(-1).mean()


check_decoder_norm_l1(relu_l1_penalty)
