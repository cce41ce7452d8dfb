import numpy as np

from crosscoder_lib import check_auroc


def auroc_by_hand(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """The area under the ROC curve of a detector: how well its scores separate positives (triggered
    prompts) from negatives (clean ones).

        AUROC = P(s₊ > s₋) + ½ · P(s₊ = s₋)

    over all pairs of one positive and one negative score: 1 is perfect separation, 0.5 chance, and
    below 0.5 the positives score LOWER. scores_pos: [P]; scores_neg: [Q]. Returns a Python float.

    Hint: compare every pair at once by broadcasting scores_pos[:, None] against scores_neg[None, :].
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 5.2: write the AUROC (see the docstring above); then run this cell: "
                                  "its last line checks your function")
    higher = scores_pos[:, None] > scores_neg[None, :]
    tied = scores_pos[:, None] == scores_neg[None, :]
    return float((higher + 0.5 * tied).mean())


check_auroc(auroc_by_hand)
