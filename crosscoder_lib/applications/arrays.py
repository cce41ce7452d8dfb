"""Array inputs of the analysis functions: a torch tensor or anything NumPy reads, as a NumPy array.

The applications measure and plot; they never train. So a tensor is read detached from its graph
and copied to the CPU, and the analysis modules accept tensors and arrays alike.
"""

from __future__ import annotations

import numpy as np


def as_numpy(x) -> np.ndarray:
    """``x`` as a NumPy array: a tensor detached and moved to the CPU, anything else through
    ``np.asarray`` (no copy when it already is one)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
