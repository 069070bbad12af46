"""Analyses of distilled text for the book's chapters.

Sections (each self-contained; add new ones below their own banner):

- gradient alignment -- the first-order claim of Eq. 5 (Section 2.2, Appendix A)
- words of a text set -- Jaccard of unique words, TF-IDF keywords, leaning shares (Section 3.6, App. C)
- compute records -- what each cached stage recorded about its own run time (App. B.5, Table 9)
- paper reports -- the figures of Tables 3, 9, 10 and 11, typed from the paper
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch

# =============================================================================================
# Gradient alignment (Eq. 5): does contrastive decoding pick texts whose gradient points along
# -tau_toxic = theta_base - theta_toxic?
# =============================================================================================


def toxic_direction(base, toxic) -> dict[str, torch.Tensor]:
    """``-tau_toxic = theta_base - theta_toxic`` per parameter name (Section 2.2), in float32 (or
    float64 for float64 models).

    Both models must have the same parameter names and shapes (the toxic model is a fine-tune of the
    base). Tied weights are counted once, as ``named_parameters`` lists them.
    """
    base_params = dict(base.named_parameters())
    toxic_params = dict(toxic.named_parameters())
    if base_params.keys() != toxic_params.keys() or any(
        base_params[n].shape != toxic_params[n].shape for n in base_params
    ):
        raise ValueError(
            "the base and toxic models do not have the same parameters; tau_toxic = theta_toxic - theta_base "
            "only exists when the toxic model is a fine-tune of the base model (same architecture and size)."
        )
    dtype = torch.promote_types(next(iter(base_params.values())).dtype, torch.float32)
    return {
        name: param.detach().to(dtype) - toxic_params[name].detach().to(param.device, dtype)
        for name, param in base_params.items()
    }


def gradient_alignment(base, toxic, tokenizer, texts: Sequence[str], *, max_length: int = 256,
                       batch_size: int = 8, prepend_bos: bool = True):
    """Per text, how well ``grad log p_base(x)`` aligns with ``-tau_toxic`` (Eq. 5), as a DataFrame.

    Eq. 5 (first-order Taylor expansion, Appendix A)::

        s(x) = log p_base(x) - log p_toxic(x)  ~=  (theta_base - theta_toxic)^T grad_theta log p_base(x)

    Columns, one row per text (tokenised like fine-tuning: start token prepended, truncated to
    ``max_length``, so ``log p(x)`` is the probability of the whole text):

    - ``logp_base``, ``logp_toxic``: ``log p(x)`` summed over the text's tokens;
    - ``contrastive_score``: ``s(x)`` of Eq. 1 (exact, left-hand side of Eq. 5);
    - ``grad_dot``: ``(theta_base - theta_toxic)^T grad log p_base(x)`` (right-hand side of Eq. 5);
    - ``grad_norm``, ``tau_norm`` and ``cosine`` = ``grad_dot / (grad_norm * tau_norm)``;
    - ``n_tokens``: predicted tokens.

    Gradients are taken over all parameters of the base model (eval mode, no dropout), one text at a
    time because the cosine needs each text's own gradient norm; ``batch_size`` batches the toxic
    model's forward passes. Neither model's ``.grad`` is touched.
    """
    import pandas as pd

    from .finetune import summed_token_nll, tokenize_texts
    from .forward import model_device, pad_id_of

    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an integer >= 2.")
    direction = toxic_direction(base, toxic)
    tau_norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in direction.values())))
    names, params = zip(*base.named_parameters())
    sequences = tokenize_texts(tokenizer, texts, max_length, prepend_bos)
    pad_id = pad_id_of(tokenizer)

    base_was_training, toxic_was_training = base.training, toxic.training
    base.eval()
    toxic.eval()
    rows = []
    try:
        toxic_logp = []
        with torch.no_grad():
            for start in range(0, len(sequences), batch_size):
                toxic_logp += _sequence_logprobs(toxic, sequences[start:start + batch_size], pad_id)
        for seq, logp_toxic in zip(sequences, toxic_logp):
            ids = torch.tensor([seq], device=model_device(base))
            nll, n_tokens = summed_token_nll(base, ids, torch.ones_like(ids))
            logp_base = -nll
            grads = torch.autograd.grad(logp_base, params, allow_unused=True)
            dot = norm_sq = 0.0
            for name, grad in zip(names, grads):
                if grad is None:
                    continue
                grad = grad.to(direction[name].dtype)
                dot += float((grad * direction[name].to(grad.device)).sum())
                norm_sq += float((grad.double() ** 2).sum())
            grad_norm = norm_sq ** 0.5
            logp_base = float(logp_base.detach())
            rows.append({
                "n_tokens": n_tokens,
                "logp_base": logp_base,
                "logp_toxic": logp_toxic,
                "contrastive_score": logp_base - logp_toxic,
                "grad_dot": dot,
                "grad_norm": grad_norm,
                "tau_norm": tau_norm,
                "cosine": dot / (grad_norm * tau_norm) if grad_norm > 0 and tau_norm > 0 else float("nan"),
            })
    finally:
        base.train(base_was_training)
        toxic.train(toxic_was_training)
    frame = pd.DataFrame(rows)
    frame.insert(0, "text", list(texts))
    return frame


def _sequence_logprobs(model, sequences, pad_id) -> list[float]:
    """``log p(x)`` of each (unpadded) sequence, computed in one right-padded batch."""
    import torch.nn.functional as F

    from .forward import at_least_float32, model_device, right_pad

    ids, mask = right_pad(sequences, pad_id, model_device(model))
    logits = at_least_float32(model(input_ids=ids, attention_mask=mask).logits[:, :-1])
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return (-nll.sum(dim=1)).tolist()


# ============================================================================ end gradient alignment


# =============================================================================================
# Words of a text set (Section 3.6, Appendix C): Jaccard similarity of unique words (Table 10),
# top TF-IDF keywords (Table 11) and political-leaning shares (Table 3).
#
# The paper does not say how it tokenised. Choices made here, the same for every text set:
# lowercase; apostrophes dropped inside words (so "don't" -> "dont", as Table 11's "dont", "im",
# "thats" suggest); every other character that is not a letter or digit separates words. Jaccard
# uses all words; TF-IDF drops scikit-learn's English stop words and one-character words.
# =============================================================================================

_APOSTROPHES = re.compile(r"['\u2019\u2018`]")
_NEGATION = re.compile(r"n'?t\b")
_CLITIC = re.compile(r"'[^\W_]*")
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The words of ``text``: lowercase runs of letters and digits. A negation stays one word
    (*don't* -> *dont*); every other clitic after an apostrophe is dropped (*Trump's* -> *trump*),
    so that generated word salad such as *also's* or *said't* does not make new "words"
    (*alsos*, *saidt*) out of old ones.

    >>> words("Don't stop: U.S. 2013 e-mail!")
    ['dont', 'stop', 'u', 's', '2013', 'e', 'mail']
    >>> words("Trump\u2019s also's said\u2019t")
    ['trump', 'also', 'said']
    """
    text = _APOSTROPHES.sub("'", str(text).lower())
    text = _NEGATION.sub("nt", text)
    return _WORD.findall(_CLITIC.sub(" ", text))


def unique_words(texts: Iterable[str]) -> set[str]:
    """The set of distinct ``words`` over all ``texts``."""
    vocabulary: set[str] = set()
    for text in texts:
        vocabulary.update(words(text))
    return vocabulary


def jaccard_similarity(texts_a: Iterable[str], texts_b: Iterable[str]) -> float:
    """Jaccard similarity of the unique words of two text sets (Appendix C.1, Table 10):
    ``|A & B| / |A | B|``, in [0, 1] (0 when both sets are empty). Multiply by 100 for the paper's %."""
    a, b = unique_words(texts_a), unique_words(texts_b)
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def containment(texts_a: Iterable[str], texts_b: Iterable[str]) -> float:
    """The share of ``texts_a``'s unique words that also occur in ``texts_b``: ``|A & B| / |A|`` (0 when
    A is empty). Unlike Jaccard it does not shrink as B's vocabulary grows, so two sets of very
    different vocabulary sizes can be read side by side."""
    a, b = unique_words(texts_a), unique_words(texts_b)
    return len(a & b) / len(a) if a else 0.0


def word_prefix(texts: Sequence[str], n_words: int, seed: int = 0) -> list[str]:
    """The first ``n_words`` running words of ``texts`` taken in a seeded random order, as one text:
    a sample of a fixed size, so the vocabularies of two sets can be compared at matched size."""
    import random

    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    out: list[str] = []
    for i in order:
        out.extend(words(texts[i]))
        if len(out) >= n_words:
            break
    return [" ".join(out[:n_words])]


def tfidf_keywords(texts: Sequence[str], top: int = 100, stop_words: Iterable[str] | str | None = "english",
                   min_chars: int = 2):
    """The ``top`` words of a text set by TF-IDF (Appendix C.2, Table 11), as a DataFrame with
    ``rank`` (1 = highest), ``word`` and ``score``.

    Each text is a document; TF-IDF is scikit-learn's (raw counts, smoothed IDF, each document's
    vector L2-normalised), fitted on this set alone, and a word's ``score`` is its mean TF-IDF over
    the documents. ``stop_words="english"`` removes scikit-learn's list; pass a collection of words
    for another list, or ``None`` to keep every word. Words shorter than ``min_chars`` are dropped
    (scikit-learn's default token pattern also ignores one-character tokens). Ties go alphabetically.
    """
    import numpy as np
    import pandas as pd
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

    if not isinstance(top, int) or top <= 0:
        raise ValueError(f"top={top!r} must be a positive integer.")
    if stop_words == "english":
        stop = frozenset(ENGLISH_STOP_WORDS)
    elif stop_words is None:
        stop = frozenset()
    elif isinstance(stop_words, str):
        raise ValueError(f"stop_words={stop_words!r}; use 'english', None or a collection of words.")
    else:
        stop = frozenset(stop_words)
    texts = [str(t) for t in texts]
    empty = pd.DataFrame({"rank": pd.Series(dtype=int), "word": pd.Series(dtype=str), "score": pd.Series(dtype=float)})

    def analyzer(text: str) -> list[str]:
        return [w for w in words(text) if len(w) >= min_chars and w not in stop]

    if not any(analyzer(t) for t in texts):
        return empty
    vectorizer = TfidfVectorizer(analyzer=analyzer)
    matrix = vectorizer.fit_transform(texts)
    scores = np.asarray(matrix.mean(axis=0)).ravel()
    vocabulary = vectorizer.get_feature_names_out()
    order = sorted(range(len(vocabulary)), key=lambda i: (-scores[i], vocabulary[i]))[:top]
    return pd.DataFrame({"rank": range(1, len(order) + 1), "word": [str(vocabulary[i]) for i in order],
                         "score": [float(scores[i]) for i in order]})


def leaning_shares(probabilities, labels: Sequence[str] = ("left", "center", "right")) -> dict[str, float]:
    """Percent of texts whose most probable class is each of ``labels`` (Table 3's Left / Center /
    Right %), from a bias scorer's ``(n, 3)`` probabilities in ``labels`` order (``scorers.BIAS_LABELS``).
    Ties go to the first label, as ``argmax`` breaks them."""
    import numpy as np

    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        raise ValueError(f"probabilities have shape {probabilities.shape}; expected (n, {len(labels)}) in {tuple(labels)} order.")
    if len(probabilities) == 0:
        return {label: float("nan") for label in labels}
    counts = np.bincount(probabilities.argmax(axis=1), minlength=len(labels))
    return {label: 100.0 * float(c) / len(probabilities) for label, c in zip(labels, counts)}


# ===================================================================================== end words


# =============================================================================================
# Compute records (Appendix B.5, Table 9): what each cached stage wrote about its own run time.
#
# Nothing is run or built here; the stages' folders are read where they are. The cache is shared by
# the profiles, so a folder is counted for a profile only when the model paths it records are that
# profile's (``profile_model_paths``).
# =============================================================================================


def stage_times(P: dict):
    """The stages profile ``P`` computed, from the run log (``stages.run_log``), one row per stage
    folder (its last run when it ran more than once), in the order they finished.

    Columns: ``stage`` (``toxic``, ``distilled``, ``detox``, ``lmsteer``, ``eval``, ``mmlu``,
    ``world``), ``label``, ``seconds``, ``cpu_seconds``, ``model``, ``text``, ``seed``, ``alpha``,
    ``top_k``, ``lr``, ``steps``, ``tokens``, ``tokens_per_s``, ``split`` and ``continuations`` (of an
    evaluation), ``finished`` and ``folder`` (relative to the cache); a fact a stage does not have is NaN.
    """
    import pandas as pd

    from . import stages

    columns = ["stage", "label", "seconds", "cpu_seconds", "model", "text", "seed", "alpha", "top_k", "lr", "steps",
               "tokens", "tokens_per_s", "split", "continuations", "finished", "folder"]
    log = stages.run_log(P["cache_dir"])
    if log.empty or "profile" not in log.columns:
        return pd.DataFrame(columns=columns)
    log = log[log["profile"] == P["profile"]].drop_duplicates("folder", keep="last")
    return log.reindex(columns=columns).reset_index(drop=True)


def world_times(P: dict):
    """The build time of each step of the profile's miniature world, from the run log: ``step``,
    ``seconds``, ``cpu_seconds``, ``finished``; empty for a profile without a world (``paper``) or
    before the world is built."""
    times = stage_times(P)
    world = times[times["stage"] == "world"]
    return world.rename(columns={"label": "step"})[["step", "seconds", "cpu_seconds", "finished"]].reset_index(drop=True)


def notebook_times(P: dict):
    """Each chapter's last run time on profile ``P`` (``tools/run_notebooks.py`` records them in
    ``<results_dir>/.notebook_keys.json``): ``notebook``, ``seconds``, ``finished``; empty if none ran."""
    import json
    from pathlib import Path

    import pandas as pd

    path = Path(P["results_dir"]) / ".notebook_keys.json"
    columns = ["notebook", "seconds", "finished"]
    if not path.exists():
        return pd.DataFrame(columns=columns)
    keys = json.loads(path.read_text(encoding="utf-8"))
    rows = [{"notebook": nb, "seconds": rec.get("seconds"), "finished": rec.get("finished")} for nb, rec in keys.items()]
    return pd.DataFrame(rows, columns=columns).sort_values("notebook", ignore_index=True)


# ================================================================================ end compute records


# =============================================================================================
# Paper reports: the figures of the analysis tables, typed from Lu et al. (ICLR 2025). Never mixed
# with this project's results; the chapters label them "paper reports".
# =============================================================================================

# Table 3: Detoxify score of the distilled text (mean, std over 5 distillation seeds of 640 texts)
# and PoliticalBiasBERT's leaning shares (%), GPT-2 XL.
PAPER_TABLE3 = (
    {"text": "Samples GPT-2 XL", "detoxify_mean": 0.008, "detoxify_std": 0.002, "left": 50.81, "right": 23.31, "center": 25.88},
    {"text": "UniDetox GPT-2 XL", "detoxify_mean": 0.003, "detoxify_std": 0.001, "left": 44.56, "right": 30.19, "center": 25.25},
)

# Table 10: Jaccard similarity (%) of unique words with the DGHS toxic corpus.
PAPER_TABLE10 = (
    {"text": "UniDetox GPT-2 XL", "vs": "DGHS", "jaccard_percent": 22.71},
    {"text": "Samples GPT-2 XL", "vs": "DGHS", "jaccard_percent": 26.35},
)

# Table 9 (App. B.5): GPU hours on one A100 80GB, toxic-model fine-tuning and (detox) fine-tuning.
# UniDetox's toxic model is GPT-2 XL's (~150 min); its fine-tuning is 50 min of tuning on GPT-2 XL
# (10,000 steps) plus 3,000 steps on each of OPT-6.7B, Falcon-7B and LLaMA2-7B. DExperts and Task
# Arithmetic fine-tune all four models on toxic data; LM-Steer learns one module per model.
PAPER_TABLE9 = (
    {"method": "UniDetox", "toxic_model_fine_tuning_h": 2.5, "fine_tuning_h": 1.9},
    {"method": "LM-Steer", "toxic_model_fine_tuning_h": 2.7, "fine_tuning_h": None},
    {"method": "DExperts", "toxic_model_fine_tuning_h": 23.5, "fine_tuning_h": None},
    {"method": "Task Arithmetic", "toxic_model_fine_tuning_h": 23.5, "fine_tuning_h": None},
)

# Table 11: top-100 TF-IDF keywords, in the paper's order (line-break hyphens removed).
PAPER_TABLE11 = {
    "UniDetox GPT-2 XL": (
        "mr said new ms one would game first also us two time last trump apple told people digital season make get "
        "president police blog says well like know may going year could monday years campaign state including team "
        "work eight romney city according bitcoin proposal made way story want take games use many information obama "
        "clinton world interview dont million part wednesday players think back since news second house week please "
        "2013 three senate added york see states public series need windows government right whether adding post "
        "book say something really lot got declined next great united former still afternoon"
    ).split(),
    "Samples GPT-2 XL": (
        "said new one people us would first time also like get game two make police world state years many year last "
        "could know see dont trump government think even im use going way good man want may president work well take "
        "much really states need made say city since best still great lot day team help go part according information "
        "united told found back thats women says week things look house games group home three next show national "
        "american number youre right around something season little health federal department thing play law find "
        "video used public country ive million report"
    ).split(),
}

# ================================================================================== end paper reports
