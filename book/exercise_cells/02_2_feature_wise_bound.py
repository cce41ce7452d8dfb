import torch

from crosscoder_lib import check_feature_wise_bound


def feature_wise_bound(p_TNK: torch.Tensor, beta_N: torch.Tensor, W_out_ND: torch.Tensor, b_out_D: torch.Tensor,
                       sigma, lip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The feature-wise explanation of one MLP, its actual error and the two bounds on it, per token.

        z[t, n] = Σ_k p[t, n, k] + β[n];   i = argmax_k |p[t, n, k]| (first slot on ties)
        MLP(n̂2) = σ(z) @ W_out + b_out;   g(t) = σ(p[t, n, i] + β) @ W_out + b_out
        actual[t] = ‖MLP(n̂2)(t) − g(t)‖
        mid[t]    = Σ_n ‖W_out[n]‖ · |σ(z[t, n]) − σ(p[t, n, i] + β[n])|
        lip[t]    = Lip(σ) · Σ_n ‖W_out[n]‖ · (Σ_k |p[t, n, k]| − |p[t, n, i]|)

    p_TNK: [T, N, K] (0 in padded slots); beta_N: [N]; W_out_ND: [N, D]; b_out_D: [D]; sigma: the
    activation; lip: Lip(σ). Returns (actual_T, mid_T, lip_T), each [T], with actual ≤ mid ≤ lip.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 2.2: write the dominant-only explanation and its bounds (see the "
                                  "docstring above); then run this cell: its last line checks your function")
    p_dom_TN = p_TNK.gather(-1, p_TNK.abs().argmax(-1, keepdim=True)).squeeze(-1)
    s_z_TN, s_dom_TN = sigma(p_TNK.sum(-1) + beta_N), sigma(p_dom_TN + beta_N)
    w_N = W_out_ND.norm(dim=-1)
    actual_T = ((s_z_TN @ W_out_ND + b_out_D) - (s_dom_TN @ W_out_ND + b_out_D)).norm(dim=-1)
    mid_T = (s_z_TN - s_dom_TN).abs() @ w_N
    lip_T = lip * ((p_TNK.abs().sum(-1) - p_dom_TN.abs()) @ w_N)
    return actual_T, mid_T, lip_T


check_feature_wise_bound(feature_wise_bound)
