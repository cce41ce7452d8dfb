import numpy as np

from crosscoder_lib import check_trigger_ranks


def trigger_ranks_by_hand(token_scores_S: np.ndarray, mask_S: np.ndarray) -> np.ndarray:
    """How high each marked (trigger) token ranks among all tokens of its prompt, by decreasing score.

        rank(t) = ( #{s : score[s] > score[t]} + ½ · #{s ≠ t : score[s] = score[t]} ) / (n − 1)

    0 for the top token, 1 for the bottom one, 0.5 on average for random scores (0 for every token of
    a one-token prompt). token_scores_S: [S] the scores of one prompt; mask_S: [S] bool, the marked
    tokens. Returns one rank per marked token (a 1-D array), in their order in the prompt.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 5.3: write the rank of the trigger tokens (see the docstring above); "
                                  "then run this cell: its last line checks your function")
    n = token_scores_S.size
    if n < 2:
        return np.zeros(int(mask_S.sum()))
    marked = token_scores_S[mask_S]
    higher = (token_scores_S[None, :] > marked[:, None]).sum(1)
    ties = (token_scores_S[None, :] == marked[:, None]).sum(1) - 1
    return (higher + 0.5 * ties) / (n - 1)


check_trigger_ranks(trigger_ranks_by_hand)
