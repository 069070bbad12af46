"""Loading any causal LM, building small ones, training their tokenizers.

One loader serves hub ids (GPT-2 XL, OPT-6.7B, Falcon-7B, LLaMA-2-7B on the paper profile) and local
folders written by ``save_pretrained`` (the mini and tiny worlds), so every later stage treats both
alike. The builder makes small random models of three ``transformers`` families -- GPT-2, OPT and
LLaMA -- the same classes the paper's models use, only smaller.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from .cache import atomic_path

# Loading a 28-tensor test model should not print two progress bars into every notebook cell.
from transformers.utils import logging as _hf_logging

_hf_logging.disable_progress_bar()

ARCHITECTURES = ("gpt2", "opt", "llama")
TOKENIZER_KINDS = ("bpe", "unigram")

# Special tokens per tokenizer scheme, mirroring the families they imitate: GPT-2/OPT use one
# byte-level "<|endoftext|>" as BOS, EOS and (by convention) padding; LLaMA's SentencePiece
# vocabulary has distinct <s>, </s> and <unk>.
SPECIAL_TOKENS = {
    "bpe": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    "unigram": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
}


class ModelNotFoundError(FileNotFoundError):
    """A model id or folder that cannot be loaded, with a message that says how to provide it."""


# --------------------------------------------------------------------------------------- tokenizers
def train_tokenizer(
    texts: Iterable[str], kind: Literal["bpe", "unigram"] = "bpe", vocab_size: int = 8000
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts``: a ``tokenizers`` tokenizer, whichever library learned it.

    ``bpe`` is byte-level BPE (the GPT-2 / OPT scheme: no unknown tokens, spaces folded into ``Ġ``);
    ``unigram`` is a SentencePiece Unigram model over ``▁``-marked words (the LLaMA scheme), trained by
    ``sentencepiece_unigram``; on a corpus too small for ``vocab_size`` pieces it has fewer.
    Two different schemes let the mini world test the paper's claim that distilled *text* transfers
    across tokenizers.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"kind={kind!r} is not a tokenizer scheme; use one of {TOKENIZER_KINDS}.")
    if vocab_size < 64:
        raise ValueError(f"vocab_size={vocab_size} is too small; use at least 64 (e.g. 8000).")
    specials = SPECIAL_TOKENS[kind]
    special_list = list(dict.fromkeys(specials.values()))
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special_list,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
    else:
        # SentencePiece trains the Unigram pieces and scores, not the ``tokenizers`` UnigramTrainer: that
        # one gives slightly different scores on every run, so the world's LLaMA model came out different
        # in every build. The pieces then go into a ``tokenizers`` Unigram model, used like any other.
        pieces = sentencepiece_unigram(texts, vocab_size, special_list)
        tok = Tokenizer(models.Unigram(pieces, unk_id=special_list.index(specials["unk_token"])))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.add_special_tokens(special_list)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    if fast.pad_token is None:  # GPT-2 convention: pad with EOS; padding is masked out everywhere
        fast.pad_token = fast.eos_token
    fast.padding_side = "left"
    return fast


def sentencepiece_unigram(texts: Iterable[str], vocab_size: int, specials: list[str]) -> list[tuple[str, float]]:
    """``(piece, score)`` of a SentencePiece Unigram model trained on ``texts``: ``specials`` first
    (score 0), then the pieces, words marked with ``▁`` as ``tokenizers``' Metaspace marks them.

    Deterministic: one thread, every text used (no sampling), no normalisation (the text as it is),
    every character kept (``character_coverage`` 1), lines of any length.
    """
    import io

    import sentencepiece as spm

    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    model = io.BytesIO()
    ids = {f"{name}_id": -1 for name in ("bos", "eos", "unk", "pad")}
    names = {"<s>": "bos", "</s>": "eos", "<unk>": "unk", "<pad>": "pad"}
    extra = [t for t in specials if t not in names]
    ids.update({f"{names[t]}_id": i for i, t in enumerate(specials) if t in names})
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="unigram", vocab_size=vocab_size,
        character_coverage=1.0, normalization_rule_name="identity", num_threads=1, input_sentence_size=0,
        max_sentence_length=1 << 16, hard_vocab_limit=False, user_defined_symbols=extra, minloglevel=2, **ids)
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(processor.id_to_piece(i), float(processor.get_score(i))) for i in range(processor.get_piece_size())]
    return [(piece, 0.0 if piece in specials else score) for piece, score in pieces]


# ------------------------------------------------------------------------------------ small models
def small_model_config(
    arch: str,
    tokenizer,
    d_model: int = 256,
    n_layer: int = 4,
    n_head: int = 4,
    max_positions: int = 256,
    ffn_mult: int = 4,
):
    """A ``transformers`` config of one family, sized by plain numbers, wired to ``tokenizer``."""
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is not supported; use one of {ARCHITECTURES}.")
    for name, value in dict(d_model=d_model, n_layer=n_layer, n_head=n_head, max_positions=max_positions).items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    if d_model % n_head:
        raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head}.")
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "gpt2":
        return GPT2Config(
            n_embd=d_model, n_layer=n_layer, n_head=n_head, n_positions=max_positions,
            n_inner=ffn_mult * d_model, **ids,
        )
    if arch == "opt":
        return OPTConfig(
            hidden_size=d_model, num_hidden_layers=n_layer, num_attention_heads=n_head,
            ffn_dim=ffn_mult * d_model, max_position_embeddings=max_positions,
            word_embed_proj_dim=d_model, do_layer_norm_before=True, **ids,
        )
    # LLaMA's SwiGLU has three matrices; 8/3 * d keeps parameters level with a 4*d two-matrix MLP.
    return LlamaConfig(
        hidden_size=d_model, num_hidden_layers=n_layer, num_attention_heads=n_head,
        num_key_value_heads=n_head, intermediate_size=int(ffn_mult * d_model * 2 / 3),
        max_position_embeddings=max_positions, tie_word_embeddings=True, **ids,
    )


def build_small_model(arch: str, tokenizer, seed: int = 0, **sizes) -> torch.nn.Module:
    """A freshly initialised causal LM of family ``arch`` (``gpt2``, ``opt`` or ``llama``)."""
    config = small_model_config(arch, tokenizer, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ------------------------------------------------------------------------------------------ saving
def save_model(model, tokenizer, path: str | os.PathLike) -> Path:
    """``save_pretrained`` model and tokenizer into ``path`` atomically (never a half-written folder)."""
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(path)


# ----------------------------------------------------------------------------------------- loading
def pick_device(device: str | None = "auto") -> torch.device:
    """CUDA when present, else CPU; an explicit ``device`` string is respected."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it (the paper's 7 B models fit one 80 GB card), float32 on CPU.

    On CPU float32 is the default because small models are latency-bound and bf16 weights lose
    precision in the contrastive score; bf16 *autocast* is chosen per stage where it measurably helps.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in named:
        raise ValueError(f"dtype={dtype!r} is not known; use 'auto' or one of {sorted(named)}.")
    return named[dtype]


def check_model_source(name_or_path: str, param: str = "model") -> None:
    """Fail early, with a fix, for a folder that does not exist or lacks a model's files."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"{param}={name_or_path!r} must be a hub id (e.g. 'gpt2-xl') or a local folder.")
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{param}={str(path)!r} is a file; give the folder written by save_pretrained.")
        missing = [f for f in ("config.json",) if not (path / f).exists()]
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        has_tokenizer = (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()
        if not has_weights:
            missing.append("model weights (*.safetensors or *.bin)")
        if not has_tokenizer:
            missing.append("tokenizer files (tokenizer.json / tokenizer_config.json)")
        if missing:
            raise ModelNotFoundError(
                f"{param}={str(path)!r} lacks {', '.join(missing)}. Save the model and tokenizer there with "
                "unidetox_core.models.save_model (save_pretrained), or point to a complete folder."
            )
    elif str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise ModelNotFoundError(
            f"{param}={str(name_or_path)!r} does not exist. Give an existing folder written by save_pretrained, "
            "or a hub id such as 'gpt2-xl' on a machine with network access."
        )


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = "auto",
    device_map: str | None = None,
    param: str = "model",
):
    """Load a causal LM and its tokenizer from a hub id or a local folder, ready for batched generation.

    The tokenizer pads on the left (generation appends on the right) and pads with EOS when the
    model has no pad token (GPT-2, LLaMA-2). On several GPUs pass ``device_map="auto"`` to shard a
    7 B model with ``accelerate``. Returns ``(model, tokenizer)`` with the model in eval mode.
    """
    check_model_source(name_or_path, param)
    target = pick_device(device)
    torch_dtype = pick_dtype(dtype, target)
    # Offline, ask only the local cache: otherwise the hub client retries for a minute before failing.
    local_only = Path(os.path.expanduser(str(name_or_path))).exists() or not hub_online()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=local_only)
        kwargs = {"dtype": torch_dtype, "local_files_only": local_only}
        if device_map is not None:
            kwargs["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    except OSError as err:  # hub unreachable, gated repo, or a typo in the id
        raise ModelNotFoundError(
            f"{param}={str(name_or_path)!r} could not be loaded ({err.__class__.__name__}). Offline, give a local "
            "folder written by save_pretrained (copy the hub snapshot there) or set HF_HOME to a cache that "
            "holds it; online, check the id and your hub token."
        ) from err
    if device_map is None:
        model.to(target)
    prepare_tokenizer(tokenizer)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def hub_online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` or ``UNIDETOX_OFFLINE`` is set, or ``host`` cannot be reached
    within ``timeout`` seconds (checked before a download would retry for a minute)."""
    import socket

    if any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "UNIDETOX_OFFLINE")):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def prepare_tokenizer(tokenizer):
    """Left padding and a pad token (EOS when the model has none), in place; returns the tokenizer."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def start_token_id(tokenizer) -> int:
    """The token that starts unconditional sampling: BOS, or EOS where BOS is absent (GPT-2's case)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token; set one before sampling from it.")
    return token


def same_tokenizer(a, b) -> bool:
    """True when two tokenizers map every string to the same ids (same vocabulary, model and rules).

    A fast tokenizer remembers the truncation and padding of its last call (and saves them into
    ``tokenizer.json``); those say nothing about the vocabulary, so they are ignored.
    """
    if len(a) != len(b) or a.get_vocab() != b.get_vocab():
        return False
    return _tokenizer_rules(a) == _tokenizer_rules(b)


def _tokenizer_rules(tokenizer) -> dict | None:
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    rules = json.loads(backend.to_str())
    rules.pop("truncation", None)
    rules.pop("padding", None)
    return rules
