from crosscoder_lib import check_lr_schedule


def lr_at_by_hand(step: int, n_steps: int, lr: float, warmup_frac: float, decay_frac: float) -> float:
    """The learning rate of (0-based) step of a run: linear warm-up, constant, linear decay to 0.

        warm = round(warmup_frac · n_steps),  decay = round(decay_frac · n_steps)
        lr · (step + 1) / warm           if step < warm             (the first step already learns)
        lr · (n_steps − step) / decay    if step ≥ n_steps − decay  (the last step learns at lr/decay)
        lr                               otherwise

    (warm-up wins where the two overlap). Returns a Python float.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 6.2: write the learning-rate schedule (see the docstring above); then "
                                  "run this cell: its last line checks your function")
    warm, decay = round(warmup_frac * n_steps), round(decay_frac * n_steps)
    if warm and step < warm:
        return lr * (step + 1) / warm
    if decay and step >= n_steps - decay:
        return lr * (n_steps - step) / decay
    return lr


check_lr_schedule(lr_at_by_hand)
