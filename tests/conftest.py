"""Shared fixtures: tiny tokenizers and models of each family, built once per test session.

Models are random (or briefly trained) and tiny so every test runs in seconds on a 2-core CPU.
The mirror is ``../shared/data`` beside the checkout unless ``UNIDETOX_DATA_MIRROR`` says otherwise.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from unidetox_core import models

# Tiny models are latency-bound: one thread is faster than two on a 2-core machine and gives the
# same numbers in every run.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts with one torch thread, whatever an earlier test set, and leaves it so (worker
    processes a test starts compute with the same count, hence the same floats)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("UNIDETOX_DATA_MIRROR", ROOT.parent / "shared" / "data"))

WORDS = (
    "the a news report says people city state president police game team season year time new first "
    "said would could also will one two three market school women men group family world water day "
    "good bad great small big old young and or but with from into over after before because very"
).split()


def tiny_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Made-up sentences over a small vocabulary: enough for tokenizers and tiny LMs to learn from."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return tiny_corpus()


@pytest.fixture(scope="session")
def bpe_tokenizer(corpus):
    return models.train_tokenizer(corpus, "bpe", vocab_size=300)


@pytest.fixture(scope="session")
def unigram_tokenizer(corpus):
    return models.train_tokenizer(corpus, "unigram", vocab_size=120)


TINY_SIZES = dict(d_model=32, n_layer=2, n_head=2, max_positions=128)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


def _saved(tmp: Path, name: str, arch: str, tokenizer, seed: int) -> Path:
    path = tmp / name
    if not path.exists():
        models.save_model(models.build_small_model(arch, tokenizer, seed=seed, **TINY_SIZES), tokenizer, path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_path(tiny_dir, bpe_tokenizer) -> Path:
    """A random GPT-2-family model with the BPE tokenizer (the source model's role)."""
    return _saved(tiny_dir, "gpt2-bpe", "gpt2", bpe_tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2_toxic_path(tiny_dir, bpe_tokenizer) -> Path:
    """Same family and tokenizer, other weights: stands in for the toxic model in decoding tests."""
    return _saved(tiny_dir, "gpt2-bpe-other", "gpt2", bpe_tokenizer, seed=1)


@pytest.fixture(scope="session")
def tiny_opt_path(tiny_dir, bpe_tokenizer) -> Path:
    return _saved(tiny_dir, "opt-bpe", "opt", bpe_tokenizer, seed=2)


@pytest.fixture(scope="session")
def tiny_llama_path(tiny_dir, unigram_tokenizer) -> Path:
    """A LLaMA-family model with the Unigram tokenizer (crosses both architecture and tokenizer)."""
    return _saved(tiny_dir, "llama-unigram", "llama", unigram_tokenizer, seed=3)


@pytest.fixture()
def tiny_gpt2(tiny_gpt2_path):
    """A fresh (model, tokenizer) pair per test, so tests may modify weights freely."""
    torch.manual_seed(0)
    return models.load_model(str(tiny_gpt2_path), device="cpu")


@pytest.fixture()
def tiny_gpt2_toxic(tiny_gpt2_toxic_path):
    return models.load_model(str(tiny_gpt2_toxic_path), device="cpu")


@pytest.fixture()
def tiny_llama(tiny_llama_path):
    return models.load_model(str(tiny_llama_path), device="cpu")


@pytest.fixture()
def tiny_opt(tiny_opt_path):
    return models.load_model(str(tiny_opt_path), device="cpu")


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "SHA256SUMS").exists():
        pytest.skip(f"no data mirror at {MIRROR} (set UNIDETOX_DATA_MIRROR)")
    return MIRROR
