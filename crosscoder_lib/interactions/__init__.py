"""Feature interactions inside MLPs: MLP kinds, contributions, the penalty, kernels, ablation."""
