import numpy as np

from crosscoder_lib import check_purity


def purity_by_hand(labels_H: np.ndarray, categories_H: list[str]) -> float:
    """Cluster purity against ground-truth categories: the share of features in their cluster's
    majority category.

        purity = Σ over clusters c of max over categories k of |c ∩ k|  /  (features scored)

    A feature is scored only if it is clustered (label ≥ 0; -1 means not clustered) and has a
    category (not "<none>"). labels_H: [H] integer cluster labels; categories_H: H category names.
    Returns a Python float in (0, 1].

    Hint: keep the scored features first, then count categories per cluster (np.unique with
    return_counts=True).
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 4.3: write the cluster purity (see the docstring above); then run "
                                  "this cell: its last line checks your function")
    categories = np.asarray(categories_H, dtype=object)
    scored = (labels_H >= 0) & (categories != "<none>")
    labels, categories = labels_H[scored], categories[scored]
    majority = 0
    for cluster in np.unique(labels):
        _, counts = np.unique(categories[labels == cluster].astype(str), return_counts=True)
        majority += counts.max()
    return majority / labels.size


check_purity(purity_by_hand)
