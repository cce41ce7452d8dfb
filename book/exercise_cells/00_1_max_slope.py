import torch

from crosscoder_lib import check_max_slope


def max_slope(sigma, z: torch.Tensor) -> float:
    """The largest slope max_z |σ'(z)| of an activation function on a grid of points.

    This is Lip(σ) (measured on the grid), the constant of every bound in the book:
    |σ(a) − σ(b)| ≤ Lip(σ)·|a − b|.

    sigma: the activation, a function of a tensor; z: a 1-D grid of pre-activations.
    Returns a Python float.

    Hint: σ'(z) by autograd: make a copy of z that requires grad, then
    torch.autograd.grad(sigma(z).sum(), z)[0] is σ' at every grid point (the sum's gradient with
    respect to each point is that point's slope).
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 0.1: write the largest slope of σ on the grid (see the docstring "
                                  "above); then run this cell: its last line checks your function")
    z = z.clone().requires_grad_(True)
    slope = torch.autograd.grad(sigma(z).sum(), z)[0]
    return slope.abs().max().item()


check_max_slope(max_slope)
