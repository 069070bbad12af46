"""Toxicity and political-bias scorers behind one interface: texts in, probabilities out.

Every scorer is a callable ``scorer(texts) -> np.ndarray`` with a ``.name`` that the tables carry,
so a number never appears without the instrument that produced it:

- toxicity scorers return shape ``(n,)``, the probability that each text is toxic;
- bias scorers return shape ``(n, 3)``, the probabilities of ``left``, ``center``, ``right``
  (``BIAS_LABELS``), in that column order.

Instruments (Section 3.3 and 3.6 of the seed):

===================== ======== ================================================================
name                  kind     what
===================== ======== ================================================================
``detoxify``          toxicity Detoxify ``'original'`` (Hanu & Unitary team, 2020), the paper's TP/EMT
``profanity_check``   toxicity alt-profanity-check's linear SVM; its model ships in the wheel (offline)
``political_bias_bert`` bias   PoliticalBiasBERT (``bucketresearch/politicalBiasBERT``), Table 3
``davidson_tfidf``    toxicity TF-IDF + logistic regression trained by the mini world (hate/offensive vs neither)
``allsides_tfidf``    bias     TF-IDF + logistic regression trained by the mini world on AllSides articles
===================== ======== ================================================================

``get_toxicity_scorer(name, **kw)`` / ``get_bias_scorer(name, **kw)`` build them by name; the two
TF-IDF ones need ``path=`` to the file that ``TfidfClassifierScorer.save`` wrote.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .cache import atomic_path
from .models import hub_online

BIAS_LABELS = ("left", "center", "right")
TOXICITY_SCORERS = ("detoxify", "profanity_check", "davidson_tfidf")
BIAS_SCORERS = ("political_bias_bert", "allsides_tfidf")


class ScorerUnavailableError(RuntimeError):
    """A scorer whose model cannot be loaded here, with a message that says how to provide it."""


# ------------------------------------------------------------------------------------------- texts
def as_texts(texts) -> list[str]:
    """A list of strings; missing values (``None``/NaN, e.g. an empty continuation read back from
    CSV) become ``""``. A single string is refused: it would be scored character by character."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string; wrap it: scorer([text]).")
    result = []
    for i, text in enumerate(list(texts)):
        if text is None or (isinstance(text, float) and math.isnan(text)):
            result.append("")
        elif isinstance(text, str):
            result.append(text)
        else:
            raise TypeError(f"texts[{i}] is {type(text).__name__} {text!r}, not a string.")
    return result


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer (e.g. 64).")
    return batch_size


# ---------------------------------------------------------------------------------------- Detoxify
DETOXIFY_CHECKPOINTS = {
    "original": "toxic_original-c1212f89.ckpt",
    "unbiased": "toxic_debiased-c7548aa0.ckpt",
    "multilingual": "multilingual_debiased-0b549669.ckpt",
}
# The Hugging Face config + tokenizer each Detoxify checkpoint is built on.
DETOXIFY_BASES = {"original": "bert-base-uncased", "unbiased": "roberta-base", "multilingual": "xlm-roberta-base"}


class DetoxifyScorer:
    """Detoxify's ``toxicity`` head (``Detoxify('original')``, a BERT trained on Jigsaw 2018): the
    paper's instrument for TP and EMT (Section 3.3). ``score_all`` returns all six heads.

    Detoxify needs two downloads: its checkpoint (from GitHub releases, cached by ``torch.hub``
    under ``$TORCH_HOME/hub/checkpoints``) and the config/tokenizer of its base model from the
    Hugging Face hub. Offline, pass ``checkpoint=`` (the ``.ckpt`` file) and
    ``huggingface_config_path=`` (a folder with ``bert-base-uncased``'s config and tokenizer), or
    set ``UNIDETOX_DETOXIFY_CHECKPOINT`` / ``UNIDETOX_DETOXIFY_CONFIG``.
    """

    def __init__(
        self,
        model_type: str = "original",
        *,
        checkpoint: str | os.PathLike | None = None,
        huggingface_config_path: str | os.PathLike | None = None,
        device: str | None = None,
        batch_size: int = 64,
    ):
        if model_type not in DETOXIFY_CHECKPOINTS:
            raise ValueError(f"model_type={model_type!r} is not a Detoxify model; use one of {sorted(DETOXIFY_CHECKPOINTS)}.")
        self.model_type = model_type
        self.name = "detoxify" if model_type == "original" else f"detoxify_{model_type}"
        self.batch_size = _check_batch_size(batch_size)
        checkpoint = checkpoint or os.environ.get("UNIDETOX_DETOXIFY_CHECKPOINT") or None
        huggingface_config_path = huggingface_config_path or os.environ.get("UNIDETOX_DETOXIFY_CONFIG") or None
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self._check_reachable(checkpoint, huggingface_config_path)
        import detoxify

        try:
            self.model = detoxify.Detoxify(
                model_type, checkpoint=None if checkpoint is None else str(checkpoint), device=device,
                huggingface_config_path=None if huggingface_config_path is None else str(huggingface_config_path),
            )
        except Exception as err:  # network errors, a bad file, a missing config: all get the same fix
            raise ScorerUnavailableError(self._how_to_provide(f"loading failed ({err.__class__.__name__}: {err})")) from err

    def _cached_checkpoint(self) -> Path:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / DETOXIFY_CHECKPOINTS[self.model_type]

    def _check_reachable(self, checkpoint, config_path) -> None:
        """Fail at once, with the fix, when a download is needed and no network is there."""
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise ScorerUnavailableError(self._how_to_provide(f"checkpoint={str(checkpoint)!r} is not a file"))
        if config_path is not None and not Path(config_path).is_dir():
            raise ScorerUnavailableError(self._how_to_provide(f"huggingface_config_path={str(config_path)!r} is not a folder"))
        needs_checkpoint = checkpoint is None and not self._cached_checkpoint().is_file()
        if needs_checkpoint and not hub_online("github.com"):
            raise ScorerUnavailableError(
                self._how_to_provide(f"the checkpoint is not cached at {self._cached_checkpoint()} and github.com is unreachable")
            )

    def _how_to_provide(self, reason: str) -> str:
        ckpt = DETOXIFY_CHECKPOINTS[self.model_type]
        base = DETOXIFY_BASES[self.model_type]
        return (
            f"Detoxify('{self.model_type}') cannot be loaded: {reason}. It needs the checkpoint {ckpt} (a GitHub "
            f"release of unitaryai/detoxify, cached by torch.hub as {self._cached_checkpoint()}) and the "
            f"'{base}' config and tokenizer from the Hugging Face hub. On a machine with network access run "
            f"Detoxify('{self.model_type}') once and copy both caches here, or pass checkpoint='/path/{ckpt}' and "
            f"huggingface_config_path='/path/{base}' (or set UNIDETOX_DETOXIFY_CHECKPOINT and UNIDETOX_DETOXIFY_CONFIG). "
            "Offline, the mini profile scores with 'profanity_check' instead."
        )

    def score_all(self, texts) -> "pd.DataFrame":  # noqa: F821
        """All Detoxify heads (toxicity, severe_toxicity, obscene, threat, insult, identity_attack)."""
        import pandas as pd

        texts = as_texts(texts)
        parts = []
        for batch in _batches(texts, self.batch_size):
            scores = self.model.predict(list(batch))
            parts.append(pd.DataFrame({k: np.asarray(v, dtype=float).reshape(-1) for k, v in scores.items()}))
        if not parts:
            return pd.DataFrame(columns=list(getattr(self.model, "class_names", ["toxicity"])), dtype=float)
        return pd.concat(parts, ignore_index=True)

    def __call__(self, texts) -> np.ndarray:
        texts = as_texts(texts)
        if not texts:
            return np.zeros(0)
        return self.score_all(texts)["toxicity"].to_numpy(dtype=float)


# ------------------------------------------------------------------------------ alt-profanity-check
class ProfanityCheckScorer:
    """``alt-profanity-check``'s ``predict_prob``: a TF-IDF + linear SVM (calibrated) trained on
    ~200k human-labelled comments. Its model ships inside the wheel, so it works offline; it is the
    mini profile's main toxicity instrument, and the paper profile's second one."""

    name = "profanity_check"

    def __init__(self, batch_size: int = 4096):
        self.batch_size = _check_batch_size(batch_size)
        try:
            from profanity_check import predict_prob
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise ScorerUnavailableError("alt-profanity-check is not installed; pip install alt-profanity-check") from err
        self._predict_prob = predict_prob

    def __call__(self, texts) -> np.ndarray:
        texts = as_texts(texts)
        if not texts:
            return np.zeros(0)
        return np.concatenate([np.asarray(self._predict_prob(list(b)), dtype=float) for b in _batches(texts, self.batch_size)])


# ------------------------------------------------------------------------------- PoliticalBiasBERT
class PoliticalBiasBertScorer:
    """PoliticalBiasBERT (``bucketresearch/politicalBiasBERT``; trained on Baly et al. 2020's
    AllSides articles), the seed's Table 3 instrument: softmax over its three logits,
    ``[0] left, [1] center, [2] right`` as its model card says.

    ``model`` may be a hub id or a local folder; ``tokenizer`` defaults to the model's own files and
    falls back to ``bert-base-cased``, the tokenizer its card loads. Texts longer than ``max_length``
    tokens are truncated (BERT reads 512).
    """

    name = "political_bias_bert"

    def __init__(
        self,
        model: str = "bucketresearch/politicalBiasBERT",
        *,
        tokenizer: str | None = None,
        device: str | None = None,
        batch_size: int = 32,
        max_length: int = 512,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .models import pick_device

        self.batch_size = _check_batch_size(batch_size)
        self.max_length = max_length
        self.device = pick_device(device or "auto")
        local = Path(os.path.expanduser(str(model))).exists()
        local_only = local or not hub_online()
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(str(model), local_files_only=local_only)
            self.tokenizer = None
            for source in [tokenizer] if tokenizer else [str(model), "bert-base-cased"]:
                try:
                    self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only or not hub_online())
                    break
                except (OSError, ValueError):
                    if tokenizer:
                        raise
            if self.tokenizer is None:
                raise OSError("no tokenizer found in the model folder nor as bert-base-cased")
        except (OSError, ValueError) as err:
            raise ScorerUnavailableError(
                f"political_bias_bert: model={str(model)!r} could not be loaded ({err.__class__.__name__}). It needs "
                "'bucketresearch/politicalBiasBERT' and the 'bert-base-cased' tokenizer from the Hugging Face hub. "
                "Offline, save both with save_pretrained into one folder on a machine with network access and pass "
                "model='/that/folder' (or set HF_HOME to a cache that holds them); the mini profile uses "
                "'allsides_tfidf' instead."
            ) from err
        n_labels = self.model.config.num_labels
        if n_labels != 3:
            raise ScorerUnavailableError(f"political_bias_bert: model={str(model)!r} has {n_labels} labels, expected 3 (left, center, right).")
        # BERT's positions count from the first column: pad on the right whatever the saved tokenizer says.
        self.tokenizer.padding_side = "right"
        self.model.to(self.device).eval()
        self._torch = torch

    def __call__(self, texts) -> np.ndarray:
        texts = as_texts(texts)
        torch = self._torch
        out = [np.zeros((0, 3))]
        with torch.inference_mode():
            for batch in _batches(texts, self.batch_size):
                enc = self.tokenizer(
                    list(batch), return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
                )
                if enc["input_ids"].shape[1] == 0:  # only empty texts, and a tokenizer that adds no [CLS]/[SEP]
                    pad = self.tokenizer.pad_token_id or 0
                    enc = {k: torch.full((len(batch), 1), pad if k == "input_ids" else 0) for k in enc}
                    enc["attention_mask"] = torch.ones((len(batch), 1), dtype=torch.long)
                enc = {k: v.to(self.device) for k, v in enc.items()}
                logits = self.model(**enc).logits.float()
                out.append(torch.softmax(logits, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(float)


# ------------------------------------------------------------------------------ TF-IDF classifiers
class TfidfClassifierScorer:
    """A scikit-learn pipeline -- ``TfidfVectorizer`` then ``LogisticRegression`` -- as a scorer.

    The mini world trains two (``world``): ``davidson_tfidf`` (binary: hate or offensive vs neither,
    Davidson et al. 2017) and ``allsides_tfidf`` (3-class: left, center, right on the AllSides
    articles of Baly et al. 2020, the data PoliticalBiasBERT was trained on). They stand in,
    offline, for the instruments the paper loads from the hub.

    - binary (``positive_label`` given, default ``1``): ``scorer(texts)`` is ``P(positive)``, shape ``(n,)``;
    - multi-class (``class_order`` given): shape ``(n, k)`` with columns in ``class_order``.
    """

    def __init__(
        self,
        name: str,
        *,
        class_order: Sequence | None = None,
        positive_label=1,
        max_features: int = 50_000,
        ngram_range: tuple[int, int] = (1, 2),
        min_df: int = 1,
        C: float = 4.0,
        max_iter: int = 1000,
        batch_size: int = 8192,
        seed: int = 0,
        class_weight: str | None = None,
    ):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline

        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string, e.g. 'davidson_tfidf'; tables report it.")
        self.name = name
        self.class_order = None if class_order is None else list(class_order)
        self.positive_label = None if self.class_order is not None else positive_label
        self.batch_size = _check_batch_size(batch_size)
        self.pipeline = Pipeline(
            [
                ("tfidf", TfidfVectorizer(max_features=max_features, ngram_range=tuple(ngram_range), min_df=min_df,
                                          sublinear_tf=True, strip_accents="unicode")),
                ("classifier", LogisticRegression(C=C, max_iter=max_iter, random_state=seed, class_weight=class_weight)),
            ]
        )
        self.fitted = False

    @property
    def is_binary(self) -> bool:
        return self.class_order is None

    def fit(self, texts, labels) -> "TfidfClassifierScorer":
        texts = as_texts(texts)
        labels = list(labels)
        if len(texts) != len(labels):
            raise ValueError(f"fit got {len(texts)} texts and {len(labels)} labels; give one label per text.")
        seen = set(labels)
        if self.is_binary:
            if self.positive_label not in seen or len(seen) != 2:
                raise ValueError(
                    f"a binary scorer needs exactly two labels including positive_label={self.positive_label!r}; "
                    f"got {sorted(map(repr, seen))}."
                )
        else:
            missing = [c for c in self.class_order if c not in seen]
            extra = sorted(map(repr, seen - set(self.class_order)))
            if missing or extra:
                raise ValueError(f"labels must be exactly class_order={self.class_order}; missing {missing}, unexpected {extra}.")
        self.pipeline.fit(texts, labels)
        self.fitted = True
        return self

    def __call__(self, texts) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit(texts, labels) or TfidfClassifierScorer.load(path) before scoring.")
        texts = as_texts(texts)
        classes = list(self.pipeline.classes_)
        if self.is_binary:
            column = classes.index(self.positive_label)
            parts = [self.pipeline.predict_proba(list(b))[:, column] for b in _batches(texts, self.batch_size)]
            return np.concatenate([np.zeros(0)] + parts).astype(float)
        columns = [classes.index(c) for c in self.class_order]
        parts = [self.pipeline.predict_proba(list(b))[:, columns] for b in _batches(texts, self.batch_size)]
        return np.concatenate([np.zeros((0, len(columns)))] + parts).astype(float)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted scorer with joblib, atomically (a crash never leaves half a file)."""
        import joblib

        if not self.fitted:
            raise RuntimeError(f"{self.name}: fit before save.")
        with atomic_path(path) as tmp:
            joblib.dump(
                {"format": "unidetox-tfidf-1", "name": self.name, "class_order": self.class_order,
                 "positive_label": self.positive_label, "batch_size": self.batch_size, "pipeline": self.pipeline},
                tmp,
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TfidfClassifierScorer":
        import joblib

        path = Path(path)
        if not path.is_file():
            raise ScorerUnavailableError(
                f"no TF-IDF scorer at {str(path)!r}; the mini world trains and saves it (``world``), or fit one with "
                "TfidfClassifierScorer(name).fit(texts, labels).save(path)."
            )
        blob = joblib.load(path)
        if not isinstance(blob, dict) or blob.get("format") != "unidetox-tfidf-1":
            raise ScorerUnavailableError(f"{str(path)!r} is not a file written by TfidfClassifierScorer.save.")
        scorer = cls.__new__(cls)
        scorer.name = blob["name"]
        scorer.class_order = blob["class_order"]
        scorer.positive_label = blob["positive_label"]
        scorer.batch_size = blob["batch_size"]
        scorer.pipeline = blob["pipeline"]
        scorer.fitted = True
        return scorer


def add_scores(frame, scorer, *, text_column: str = "continuation", score_column: str = "score"):
    """A copy of ``frame`` with the toxicity ``scorer``'s probabilities in ``score_column`` and its
    name in a ``scorer`` column (what ``metrics.toxicity_table`` reads to label its table)."""
    if text_column not in frame.columns:
        raise ValueError(f"frame has no {text_column!r} column; it has {list(frame.columns)}.")
    scores = np.asarray(scorer(frame[text_column].tolist()))
    if scores.ndim != 1:
        raise ValueError(f"{getattr(scorer, 'name', scorer)!r} returns shape {scores.shape}; add_scores takes a toxicity scorer (n,).")
    return frame.assign(**{score_column: scores, "scorer": getattr(scorer, "name", type(scorer).__name__)})


# ---------------------------------------------------------------------------------------- factories
def get_toxicity_scorer(name: str, **kwargs):
    """A toxicity scorer by name: ``detoxify``, ``profanity_check``, or ``davidson_tfidf`` (needs ``path=``).

    Keyword arguments go to the scorer (e.g. ``checkpoint=``/``device=`` for Detoxify). Returns a
    callable ``texts -> np.ndarray`` of shape ``(n,)`` with a ``.name``.
    """
    if name == "detoxify":
        return DetoxifyScorer(**kwargs)
    if name == "profanity_check":
        return ProfanityCheckScorer(**kwargs)
    if name in ("davidson_tfidf",) or (name.endswith("_tfidf") and "path" in kwargs):
        scorer = _load_tfidf(name, kwargs)
        if not scorer.is_binary:
            raise ValueError(f"{name}: the file holds a {len(scorer.class_order)}-class scorer; a toxicity scorer is binary.")
        return scorer
    raise ValueError(f"toxicity scorer {name!r} is unknown; use one of {TOXICITY_SCORERS}.")


def get_bias_scorer(name: str, **kwargs):
    """A political-bias scorer by name: ``political_bias_bert`` or ``allsides_tfidf`` (needs ``path=``).

    Returns a callable ``texts -> np.ndarray`` of shape ``(n, 3)`` (left, center, right) with a ``.name``.
    """
    if name == "political_bias_bert":
        return PoliticalBiasBertScorer(**kwargs)
    if name in ("allsides_tfidf",) or (name.endswith("_tfidf") and "path" in kwargs):
        scorer = _load_tfidf(name, kwargs)
        if scorer.is_binary or len(scorer.class_order) != 3:
            raise ValueError(f"{name}: the file does not hold a 3-class (left, center, right) scorer.")
        return scorer
    raise ValueError(f"bias scorer {name!r} is unknown; use one of {BIAS_SCORERS}.")


def _load_tfidf(name: str, kwargs: dict) -> TfidfClassifierScorer:
    unknown = set(kwargs) - {"path"}
    if unknown:
        raise TypeError(f"{name} takes only path=, not {sorted(unknown)}.")
    if kwargs.get("path") is None:
        raise ValueError(
            f"{name} is trained by the mini world; pass path= to the .joblib file that the world wrote "
            "(TfidfClassifierScorer.save)."
        )
    scorer = TfidfClassifierScorer.load(kwargs["path"])
    scorer.name = name
    return scorer
