import torch

from crosscoder_lib import check_keep_largest


def keep_largest_mlp(p_TNK: torch.Tensor, beta_N: torch.Tensor, W_out_ND: torch.Tensor, b_out_D: torch.Tensor,
                     sigma) -> torch.Tensor:
    """One block's MLP output when every neuron sees only its dominant feature (Figure 2's keep_largest).

        i[t, n] = argmax_k |p[t, n, k]|          (the first slot on ties, as torch.argmax)
        z[t, n] = p[t, n, i[t, n]] + β[n]        (the signed contribution; the bias is not a feature,
                                                  but the neuron still sees it)
        out[t] = σ(z[t]) @ W_out + b_out

    p_TNK: [T, N, K] per-feature pre-activation contributions (0 in padded slots); beta_N: [N];
    W_out_ND: [N, D]; b_out_D: [D]; sigma: the MLP's activation function. Returns out_TD: [T, D].

    Hint: argmax over the last axis with keepdim=True, then gather the signed p with it.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 3.3: write the keep_largest MLP (see the docstring above); then run "
                                  "this cell: its last line checks your function")
    dominant_TN1 = p_TNK.abs().argmax(-1, keepdim=True)
    z_TN = p_TNK.gather(-1, dominant_TN1).squeeze(-1) + beta_N
    return sigma(z_TN) @ W_out_ND + b_out_D


check_keep_largest(keep_largest_mlp)
