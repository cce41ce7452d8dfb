import torch

from crosscoder_lib import check_one_neuron


def one_neuron_interaction(p_BH: torch.Tensor, beta: float, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """One neuron fed by H features: the error of the feature-wise explanation and the interaction term.

    For each row b (a token) feature v contributes p[b, v] to the neuron's pre-activation and the
    neuron's bias is β (not a feature). With the dominant feature i = argmax_v |p[b, v]| (the
    first one on ties, as torch.argmax):

        error[b] = |σ(Σ_v p[b, v] + β) − σ(p[b, i] + β)|     (true neuron against feature-wise)
        term[b]  = Σ_{j≠i} |p[b, j]|                          (the interaction term)

    so that error ≤ Lip(σ)·term. p_BH: [B, H]; beta: a number; sigma: the activation.
    Returns (error_B, term_B), both [B].

    Hint: gather the dominant contribution with the argmax of p_BH.abs() along dim 1.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 0.2: write the feature-wise error and the interaction term of one "
                                  "neuron (see the docstring above); then run this cell: its last line checks "
                                  "your function")
    i_B1 = p_BH.abs().argmax(1, keepdim=True)
    p_dom_B = p_BH.gather(1, i_B1).squeeze(1)
    error_B = (sigma(p_BH.sum(1) + beta) - sigma(p_dom_B + beta)).abs()
    term_B = p_BH.abs().sum(1) - p_dom_B.abs()
    return error_B, term_B


check_one_neuron(one_neuron_interaction)
