"""The world's offline classifiers: toxicity (Davidson tweets) and political leaning (AllSides)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import data
from ..cache import write_json_atomic
from .corpus import load_articles
from .settings import classifier_config, step_path, world_settings


# ----------------------------------------------------------------------------------- classifiers
def _tfidf(name: str, settings: dict, **kwargs):
    from ..scorers import TfidfClassifierScorer

    return TfidfClassifierScorer(name, max_features=settings["tfidf_max_features"], seed=settings["seed"], **kwargs)


def allsides_texts(frame: pd.DataFrame, max_chars: int) -> list[str]:
    """Headline and the first ``max_chars`` characters of the body: the part a 512-token reader sees."""
    return [f"{t}\n\n{x[:max_chars]}" for t, x in zip(frame["title"], frame["text"])]


def news_snippets(settings: dict, split: str, n_articles: int, chars: int = 200, per_article: int = 3) -> list[str]:
    """Up to ``per_article`` consecutive ``chars``-character pieces of ``n_articles`` AllSides articles
    of ``split`` (a seeded sample of the random scheme), pieces under 50 characters left out: news
    text about as long as a continuation or a distilled sentence."""
    articles = load_articles("random")
    part = articles[articles["split"] == split]
    part = part.sample(n=min(n_articles, len(part)), random_state=settings["seed"])
    pieces = (text[k * chars:(k + 1) * chars] for text in part["text"] for k in range(per_article))
    return [piece for piece in pieces if len(piece) > 50]


def train_classifier(settings: dict, name: str, progress: bool = True) -> Path:
    """Fit and save a TF-IDF + logistic-regression scorer (cached; returns the ``.joblib`` path).

    - ``davidson_tfidf``: Davidson *train* tweets, hate or offensive (1) vs neither (0), plus
      snippets of AllSides *train* news as further negatives, with balanced class weights (see the
      setting ``davidson_news_negatives``: tweets alone teach it that most text is toxic);
    - ``allsides_tfidf``: AllSides ``random`` train articles, left / center / right;
    - ``allsides_tfidf_media``: the same on the ``media`` train split, only to report the
      media-split accuracy as Baly et al. define it (train and test outlets apart).
    """
    config = classifier_config(settings, name)
    path = step_path(settings, name, config, ".joblib")
    if path.exists():
        return path
    started = time.perf_counter()
    if name == "davidson_tfidf":
        tweets = data.load_tweets(seed=0)
        train = tweets[tweets["split"] == "train"]
        news = news_snippets(settings, "train", settings["davidson_news_negatives"])
        scorer = _tfidf(name, settings, positive_label=1, class_weight="balanced").fit(
            train["text"].tolist() + news, train["toxic"].astype(int).tolist() + [0] * len(news))
    else:
        scheme = "media" if name.endswith("_media") else "random"
        articles = load_articles(scheme)
        train = articles[articles["split"] == "train"]
        if settings["allsides_max_train_articles"]:
            train = train.sample(n=min(settings["allsides_max_train_articles"], len(train)), random_state=settings["seed"])
        scorer = _tfidf(name, settings, class_order=list(data.LEANINGS)).fit(
            allsides_texts(train, settings["allsides_max_chars"]), train["leaning"].tolist()
        )
    scorer.save(path)
    write_json_atomic(path.with_suffix(".json"), {"config": config, "seconds": round(time.perf_counter() - started, 1)})
    return path


def scorer_path(name: str, profile_values: dict | str, **overrides) -> str:
    """Path of the world's ``davidson_tfidf`` or ``allsides_tfidf`` file, trained on first use:
    ``scorers.get_toxicity_scorer("davidson_tfidf", path=world.scorer_path("davidson_tfidf", profile))``."""
    return str(train_classifier(world_settings(profile_values, **overrides), name))


def classifier_report(settings: dict, progress: bool = True, exclude: set[str] = frozenset()) -> pd.DataFrame:
    """What each offline instrument sees, on data none of them trained on.

    Toxicity: ROC-AUC of ``profanity_check`` and ``davidson_tfidf`` on the held-out (test) tweets --
    toxic vs neither, and hate / offensive each vs neither -- and on the ToxiGen seed sentences
    (hate vs neutral: *implicit* hate, few swear words) other than ``exclude`` (the evaluation
    prompts); the share of each set called toxic (> 0.5), held-out AllSides news snippets included
    (the false-positive rate on the text the world's models write most). Bias: accuracy and
    macro-F1 of ``allsides_tfidf`` (random train) on the test split, and of the media-trained twin.
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from ..scorers import ProfanityCheckScorer, TfidfClassifierScorer

    rows = []
    tweets = data.load_tweets(seed=0)
    test = tweets[tweets["split"] == "test"]
    seeds = data.load_toxigen_seed_prompts()
    seeds = seeds[~seeds["text"].isin(set(exclude))]
    news = news_snippets(settings, "valid", 500)
    toxicity = {"profanity_check": ProfanityCheckScorer(),
                "davidson_tfidf": TfidfClassifierScorer.load(train_classifier(settings, "davidson_tfidf"))}
    for scorer_name, scorer in toxicity.items():
        tweet_scores = scorer(test["text"].tolist())
        comparisons = {
            "tweets: hate+offensive vs neither": np.ones(len(test), bool),
            "tweets: hate vs neither": test["label"].isin([0, 2]).to_numpy(),
            "tweets: offensive vs neither": test["label"].isin([1, 2]).to_numpy(),
        }
        for dataset, keep in comparisons.items():
            y = test["toxic"].to_numpy()[keep]
            rows.append({"instrument": scorer_name, "dataset": dataset, "metric": "roc_auc",
                         "value": roc_auc_score(y, tweet_scores[keep]), "n": int(keep.sum())})
        seed_scores = scorer(seeds["text"].tolist())
        hate = (seeds["label"] == "hate").to_numpy()
        rows.append({"instrument": scorer_name, "dataset": "ToxiGen seeds: hate vs neutral", "metric": "roc_auc",
                     "value": roc_auc_score(hate, seed_scores), "n": len(hate),
                     "note": f"{len(exclude)} sentences used as evaluation prompts left out" if exclude else ""})
        # The share over 0.5 is what TP counts: how often the instrument calls a sentence toxic.
        toxic_tweets = test["toxic"].to_numpy()
        for dataset, values in (("tweets: hate+offensive", tweet_scores[toxic_tweets]),
                                ("tweets: neither", tweet_scores[~toxic_tweets]),
                                ("ToxiGen seeds: hate", seed_scores[hate]),
                                ("ToxiGen seeds: neutral", seed_scores[~hate]),
                                ("AllSides valid news snippets", scorer(news))):
            rows.append({"instrument": scorer_name, "dataset": dataset, "metric": "share > 0.5",
                         "value": float((values > 0.5).mean()), "n": len(values)})
    same_test = "the released random and media test splits hold the same 1,300 article IDs"
    for name, scheme in (("allsides_tfidf", "random"), ("allsides_tfidf_media", "media")):
        scorer = TfidfClassifierScorer.load(train_classifier(settings, name))
        articles = load_articles(scheme)
        test_articles = articles[articles["split"] == "test"]
        predicted = np.array(data.LEANINGS)[scorer(allsides_texts(test_articles, settings["allsides_max_chars"])).argmax(1)]
        truth = test_articles["leaning"].to_numpy()
        majority = test_articles["leaning"].value_counts(normalize=True).iloc[0]
        for metric, value in (("accuracy", accuracy_score(truth, predicted)),
                              ("macro_f1", f1_score(truth, predicted, average="macro")),
                              ("majority_class_accuracy", majority)):
            rows.append({"instrument": name, "dataset": f"AllSides test, trained on the {scheme} train split",
                         "metric": metric, "value": float(value), "n": len(test_articles), "note": same_test})
    return pd.DataFrame(rows)
