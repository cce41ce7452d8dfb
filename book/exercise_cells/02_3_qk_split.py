import torch

from crosscoder_lib import check_qk_split


def qk_split_by_hand(f_SD: torch.Tensor, mu_D: torch.Tensor, W_Q_ADE: torch.Tensor, b_Q_AE: torch.Tensor,
                     W_K_ADE: torch.Tensor, b_K_AE: torch.Tensor, scale: float):
    """The attention scores of one sequence's reconstructed input n1_t = μ + f_t, split in four exact parts.

        q_t = (μ + f_t) W_Q + b_Q = q̄ + f_t W_Q       with q̄ = μ W_Q + b_Q   (likewise k_s, k̄)
        score[a, t, s] = scale · q_t · k_s
                       = scale · [ q̄·k̄  +  q̄·(f_s W_K)  +  (f_t W_Q)·k̄  +  (f_t W_Q)·(f_s W_K) ]
                                mean·mean  mean·feature   feature·mean   feature·feature

    f_SD: [S, D] the feature part Σ_i a_i(t) d_i at each position; mu_D: [D] the mean (decoder bias);
    W_Q_ADE, W_K_ADE: [A, D, E] per head; b_Q_AE, b_K_AE: [A, E]; scale: the score scale.
    Returns (mean_mean, mean_feature, feature_mean, feature_feature), each [A, Q, S] (heads, query
    position t, key position s; expand the parts that do not vary along an axis).

    Hint: torch.einsum("sd,ade->ase", f_SD, W_Q_ADE) gives every position's f_t W_Q per head.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 2.3: write the QK split (see the docstring above); then run this "
                                  "cell: its last line checks your function")
    S = f_SD.shape[0]
    q_bar_AE, k_bar_AE = mu_D @ W_Q_ADE + b_Q_AE, mu_D @ W_K_ADE + b_K_AE
    qf_ASE = torch.einsum("sd,ade->ase", f_SD, W_Q_ADE)
    kf_ASE = torch.einsum("sd,ade->ase", f_SD, W_K_ADE)
    mean_mean = scale * (q_bar_AE * k_bar_AE).sum(-1)[:, None, None].expand(-1, S, S)
    mean_feature = scale * torch.einsum("ae,ase->as", q_bar_AE, kf_ASE)[:, None, :].expand(-1, S, S)
    feature_mean = scale * torch.einsum("ae,ate->at", k_bar_AE, qf_ASE)[:, :, None].expand(-1, S, S)
    feature_feature = scale * qf_ASE @ kf_ASE.transpose(1, 2)
    return mean_mean, mean_feature, feature_mean, feature_feature


check_qk_split(qk_split_by_hand)
