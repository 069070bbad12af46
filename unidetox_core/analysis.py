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

    from .finetune import model_device, summed_token_nll, tokenize_texts

    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an integer >= 2.")
    direction = toxic_direction(base, toxic)
    tau_norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in direction.values())))
    names, params = zip(*base.named_parameters())
    sequences = tokenize_texts(tokenizer, texts, max_length, prepend_bos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

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

    from .finetune import at_least_float32, model_device, pad_right

    batch = {k: v.to(model_device(model)) for k, v in pad_right(sequences, pad_id).items()}
    logits = at_least_float32(model(**batch).logits[:, :-1])
    labels = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
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
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The words of ``text``: lowercase runs of letters and digits, apostrophes removed inside words.

    >>> words("Don't stop: U.S. 2013 e-mail!")
    ['dont', 'stop', 'u', 's', '2013', 'e', 'mail']
    """
    return _WORD.findall(_APOSTROPHES.sub("", str(text).lower()))


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


def profile_model_paths(P: dict) -> dict[str, str]:
    """Each model name of profile ``P`` -> the path or hub id its cached stages record, without
    building anything: a ``world:`` model's folder under ``<cache_dir>/world``, a hub id unchanged."""
    from . import world

    names = [P["source_model"], *P["target_models"], P["evaluator_model"]]
    paths = {}
    for name in dict.fromkeys(n for n in names if n):
        if name.startswith("world:"):
            settings = world.world_settings(P)
            short = name.split(":", 1)[1]
            paths[name] = str(world.step_path(settings, short, world.model_config(settings, short)))
        else:
            paths[name] = name
    return paths


def _training_history(folder) -> dict | None:
    """The ``history`` saved in the newest ``step-*/training_state.pt`` under ``folder`` (None if none).
    Read memory-mapped: the newest state also holds the optimizer, twice the size of the weights."""
    from pathlib import Path

    steps = []
    for path in Path(folder).glob("step-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and (path / "training_state.pt").exists():
            steps.append((int(suffix), path / "training_state.pt"))
    if not steps:
        return None
    step, state_file = max(steps)
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, ValueError):  # an old (non-zip) file cannot be memory-mapped
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    history = dict(state["history"])
    history["last_step"] = step
    history["settings"] = state.get("settings", {})
    return history


def stage_times(P: dict, model_paths: dict[str, str] | None = None, n_toxic_texts: int | None = None):
    """One row per cached run of profile ``P`` that recorded its time, as a DataFrame:

    - ``toxic model`` (``experiments.toxic_model``): the fine-tuning history of its newest checkpoint.
      Checkpoints stop short of the last step (``save_steps`` excludes the end), so ``seconds`` is
      the recorded time per step times the run's total steps, marked ``estimated``; the total is
      ``toxic_epochs * ceil(n / toxic_batch_size)`` with ``n`` the toxic texts used (``n_toxic_texts``,
      else counted with ``data.load_toxic_texts``). A ``wall_time_s`` in the stage's ``config.json``
      is used as recorded when a later version writes one.
    - ``distillation`` (``experiments.distilled_text``): the JSON metadata's wall time and tokens/s.
    - ``detox fine-tuning`` (``experiments.detox_checkpoints``): the newest checkpoint's history
      (one run to the largest step of the grid).

    Only runs made with the profile's present sizes count (texts and lengths for distillation,
    epochs / batch / lr / lengths for the toxic model, batch and length for fine-tuning): a cache
    may still hold runs of an earlier setting.

    Columns: ``stage``, ``model`` (the profile's name), ``detail`` (a readable label), for the text
    stages ``text`` (``unidetox``, ``samples``, ``cut_only``, ``clean_news``), ``seed``, ``alpha`` and
    ``top_k`` of the text, ``lr`` (fine-tuning), then ``seconds``, ``steps``, ``tokens``,
    ``tokens_per_s``, ``how`` (``recorded`` / ``estimated ...``) and ``folder``. Evaluation and MMLU
    record no times; the chapters' run times cover them.
    """
    import json
    import math
    from pathlib import Path

    import pandas as pd

    from .experiments import slug

    model_paths = profile_model_paths(P) if model_paths is None else model_paths
    name_of_path = {str(path): name for name, path in model_paths.items()}
    name_of_slug = {slug(name): name for name in model_paths}
    cache = Path(P["cache_dir"])
    rows = []

    # distillation: the profile's texts are those whose base model is one of the profile's models
    texts = {}  # text folder name -> what made it (text kind, seed, alpha, top_k, and a readable label)
    for meta_path in sorted(cache.glob("distilled/*/texts.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        folder = meta_path.parent
        if meta.get("kind") == "clean_news":  # a copy of held-out news; the profile sets its size
            if meta.get("n") == P["distill_n_texts"] and meta.get("words") == P["distill_max_new_tokens"] * 3 // 4:
                texts[folder.name] = {"text": "clean_news", "seed": meta.get("seed"), "alpha": None, "top_k": None,
                                      "label": f"clean_news, seed {meta.get('seed')}"}
            continue
        if str(meta.get("base_model")) not in name_of_path:
            continue
        if meta.get("n_texts") != P["distill_n_texts"] or meta.get("max_new_tokens") != P["distill_max_new_tokens"]:
            continue  # made with other sizes (an earlier setting of the profile)
        kind = folder.name.rsplit("-", 1)[0].replace("-", "_")  # the folder is named by experiments.slug(kind)
        alpha = None if kind == "samples" else meta.get("alpha")
        label = f"{kind}, seed {meta.get('seed')}" + (f", alpha {alpha:g}" if alpha is not None else "")
        label += f", top_k {meta['top_k']}" if meta.get("top_k") else ""
        texts[folder.name] = {"text": kind, "seed": meta.get("seed"), "alpha": alpha, "top_k": meta.get("top_k") or 0,
                              "label": label}
        if meta.get("wall_time_s") is None:
            continue
        rows.append({"stage": "distillation", "model": name_of_path[str(meta["base_model"])], "detail": label,
                     **{k: texts[folder.name][k] for k in ("text", "seed", "alpha", "top_k")}, "lr": None,
                     "seconds": float(meta["wall_time_s"]), "steps": None,
                     "tokens": meta.get("generated_tokens"), "tokens_per_s": meta.get("tokens_per_s"),
                     "how": "recorded", "folder": str(folder)})

    # toxic models
    for config_path in sorted(cache.glob("toxic/*/config.json")):
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if str(config.get("base")) not in name_of_path:
            continue
        if any(config.get(k) != P[f"toxic_{k}"] for k in ("epochs", "batch_size", "lr", "max_length", "max_texts")):
            continue  # made with other settings
        folder = config_path.parent
        row = {"stage": "toxic model", "model": name_of_path[str(config["base"])],
               "detail": f"{config.get('epochs')} epochs, batch {config.get('batch_size')}, lr {config.get('lr'):g}",
               "lr": config.get("lr"), "folder": str(folder)}
        history = _training_history(folder / "checkpoints")
        if config.get("wall_time_s") is not None:
            row.update(seconds=float(config["wall_time_s"]), steps=config.get("steps"), tokens=config.get("tokens"),
                       tokens_per_s=config.get("tokens_per_s"), how="recorded")
        elif history and history.get("wall_time_s"):
            if n_toxic_texts is None:
                from . import data

                n_toxic_texts = len(data.load_toxic_texts(P))
            n = min(n_toxic_texts, config["max_texts"]) if config.get("max_texts") else n_toxic_texts
            total = int(config["epochs"]) * math.ceil(n / int(config["batch_size"]))
            per_step = history["wall_time_s"] / history["last_step"]
            rate = history["tokens"] / history["wall_time_s"]
            row.update(seconds=per_step * total, steps=total, tokens=history["tokens"] / history["last_step"] * total,
                       tokens_per_s=rate, how=f"estimated from step {history['last_step']} of {total}")
        else:
            continue
        rows.append(row)

    # detox fine-tuning: folders named <model slug>-<text folder>-<key>
    for folder in sorted(p for p in cache.glob("detox/*") if p.is_dir()):
        match = next((name for name in texts if f"-{name}-" in folder.name), None)
        if match is None:
            continue
        model_slug = folder.name.split(f"-{match}-")[0]
        history = _training_history(folder)
        if not history or not history.get("wall_time_s"):
            continue
        settings = history["settings"]
        if settings.get("batch_size") != P["detox_batch_size"] or settings.get("max_length") != P["detox_max_length"]:
            continue  # made with other settings
        lr = settings.get("lr")
        info = texts[match]
        rows.append({"stage": "detox fine-tuning", "model": name_of_slug.get(model_slug, model_slug),
                     "detail": f"{info['label']} text" + (f", lr {lr:g}" if lr is not None else ""),
                     **{k: info[k] for k in ("text", "seed", "alpha", "top_k")}, "lr": lr,
                     "seconds": float(history["wall_time_s"]), "steps": history["last_step"],
                     "tokens": history.get("tokens"),
                     "tokens_per_s": history["tokens"] / history["wall_time_s"] if history.get("tokens") else None,
                     "how": "recorded", "folder": str(folder)})

    columns = ["stage", "model", "detail", "text", "seed", "alpha", "top_k", "lr", "seconds", "steps", "tokens",
               "tokens_per_s", "how", "folder"]
    return pd.DataFrame(rows, columns=columns)


def world_times(P: dict):
    """The build time of each step of the profile's miniature world, read from the records each step
    wrote (``world.json`` / the classifiers' ``.json``), as a DataFrame with ``step``, ``seconds``,
    ``tokens_per_s`` (model training only) and ``what``. Steps not built yet are left out; an
    empty frame for a profile without a world (``paper``).

    Unlike ``results/<profile>/world/build_times.csv``, which times the *last* ``build_world`` call
    (near zero for the steps it found in the cache), these are the times of the runs that made them.
    """
    import json

    import pandas as pd

    from . import world
    from .cache import config_key

    columns = ["step", "seconds", "tokens_per_s", "what"]
    if P.get("profile") not in world.WORLD_SETTINGS:
        return pd.DataFrame(columns=columns)
    settings = world.world_settings(P)
    rows = []

    def record(step, path, what, seconds_key="seconds"):
        if not path.exists():
            return
        info = json.loads(path.read_text())
        if info.get(seconds_key) is None:
            return
        rows.append({"step": step, "seconds": float(info[seconds_key]), "what": what,
                     "tokens_per_s": info.get("tokens_per_s") if seconds_key == "train_seconds" else None})

    record("corpus", world.step_path(settings, "corpus", world.corpus_config(settings)) / "world.json",
           "select news and tweet documents")
    for kind in ("bpe", "unigram"):
        record(f"tokenizer-{kind}", world.step_path(settings, f"tokenizer-{kind}", world.tokenizer_config(settings, kind))
               / "world.json", f"train the {kind} tokenizer")
    record("stream", world.step_path(settings, "stream", world.stream_config(settings)) / "world.json",
           "choose the training stream (tweet token share)")
    for kind in ("bpe", "unigram"):
        record(f"blocks-{kind}", world.step_path(settings, f"blocks-{kind}", world.blocks_config(settings, kind))
               / "world.json", f"pack {kind} training blocks")
    for name in settings["models"]:
        record(name, world.step_path(settings, name, world.model_config(settings, name)) / "world.json",
               "pre-train from scratch", seconds_key="train_seconds")
    for name in ("davidson_tfidf", "allsides_tfidf", "allsides_tfidf_media"):
        record(name, world.step_path(settings, name, world.classifier_config(settings, name), ".joblib").with_suffix(".json"),
               "fit TF-IDF + logistic regression")
    source = world.step_path(settings, "gpt2-bpe", world.model_config(settings, "gpt2-bpe"))
    record("source_check", source / f"source_check-{config_key(world.check_config(settings, P))}.json",
           "validation TP and BOS samples of the source model")
    return pd.DataFrame(rows, columns=columns)


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
