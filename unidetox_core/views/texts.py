"""What chapter 09 (the detoxifying text) shows: the text sets it compares, their toxicity, political
leaning, overlap with the toxic corpus and characteristic words (the paper's Tables 3, 10 and 11),
each beside the paper's reported figures, and the sentences that compare them from the numbers.

The measures themselves (``analysis.leaning_shares``, ``jaccard_similarity``, ``tfidf_keywords``)
live in ``unidetox_core.analysis``; this module applies them to every text set and arranges them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import analysis, data, experiments, methods
from .results import without_root

UNIDETOX, SAMPLES = methods.get("unidetox"), methods.get("samples")
RELEASE = "release"  # the authors' released UniDetox text, one set
LEANINGS = ("left", "center", "right")

# Keys of a chapter's texts: (kind, seed), kind one of a fine-tuning method's ``text`` or RELEASE.
TextSets = Mapping[tuple[str, int], Sequence[str]]


# ----------------------------------------------------------------------------- the text sets
def set_names(source: str) -> dict[str, str]:
    """The display name of each kind of text set, in the chapter's order: this run's UniDetox and
    Samples texts of the ``source`` model, then the authors' release."""
    return {UNIDETOX.text: f"{UNIDETOX.label} {source} (this run)", SAMPLES.text: f"{SAMPLES.label} {source} (this run)",
            RELEASE: "UniDetox GPT-2 XL (authors' release)"}


def distillation_line(P: dict) -> str:
    """What was distilled: the source model, the seeds, how many texts of how many tokens, alpha."""
    seeds = list(P["seeds"])
    return (f"source model: {P['source_model']}; {len(seeds)} distillation seeds {seeds} of {P['distill_n_texts']} texts "
            f"of at most {P['distill_max_new_tokens']} tokens; alpha = {P['distill_alpha']}")


def reductions_note(P: dict) -> str | None:
    """A Markdown sentence naming where the profile distils less than the paper (5 seeds of 640
    texts of 256 tokens), or None on a profile that does not."""
    n_seeds = len(P["seeds"])
    if not (n_seeds < 5 or P["distill_n_texts"] < 640 or P["distill_max_new_tokens"] < 256):
        return None
    return (f"**Reductions on the `{P['profile']}` profile:** {n_seeds} distillation seed(s) instead of the paper's 5, "
            f"{P['distill_n_texts']} texts per seed (paper: 640) of at most {P['distill_max_new_tokens']} tokens "
            f"(paper: 256). Means and standard deviations below are over these {n_seeds} seed(s).")


def load_text_sets(P: dict, seeds: Sequence[int]) -> tuple[dict[tuple[str, int], list[str]], str | None]:
    """The texts of every set, keyed by (kind, seed): this run's UniDetox and Samples texts of each
    seed (``experiments.distilled_text``, cached, the very texts the fine-tuning chapters use), then
    the authors' release as seed 0. Returns the texts and, when the release is not available, why
    (its rows are then left out), else None."""
    texts = {(kind, seed): experiments.read_texts(experiments.distilled_text(P, kind, seed=seed, progress=False))
             for seed in seeds for kind in (UNIDETOX.text, SAMPLES.text)}
    try:
        release = data.load_release_text()["Text"].astype(str).tolist()
    except data.DataError as error:
        return texts, without_root(str(error))
    if release:
        texts[(RELEASE, 0)] = release
    return texts, None


def first_seed_key(kind: str, seed: int) -> tuple[str, int]:
    """The key of ``kind``'s set shown alone: this run's at ``seed``, the release's (one set) at 0."""
    return (kind, seed if kind != RELEASE else 0)


def counts_table(texts: TextSets, names: Mapping[str, str]) -> pd.DataFrame:
    """Per set and seed: how many texts, how many are empty, and their mean length in words."""
    return pd.DataFrame([
        {"text set": names[kind], "seed": seed, "texts": len(t), "empty": sum(not x.strip() for x in t),
         "mean words": np.mean([len(x.split()) for x in t])}
        for (kind, seed), t in texts.items()])


def examples_table(texts: TextSets, names: Mapping[str, str], seed: int, n: int) -> pd.DataFrame:
    """The first ``n`` non-empty texts of each set (this run's at ``seed``), line breaks as spaces,
    cut to 300 characters."""
    return pd.DataFrame([
        {"text set": names[kind], "text": " ".join(t.split())[:300]}
        for kind in names if first_seed_key(kind, seed) in texts
        for t in [x for x in texts[first_seed_key(kind, seed)] if x.strip()][:n]])


def mean_pm(mean: float, std: float, digits: int = 4) -> str:
    """``"mean ± std"`` with ``digits`` decimals, the mean alone when there is no std (one seed)."""
    return f"{mean:.{digits}f}" if np.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _population_std(values: pd.Series) -> float:
    return values.std(ddof=0)  # as the official code's np.std


# ----------------------------------------------------------------------------- toxicity (Table 3)
def score_texts(texts: TextSets, scorers: Mapping[str, Callable], names: Mapping[str, str]) -> pd.DataFrame:
    """Every text of every set scored by each of ``scorers`` (role -> scorer): one row per (text,
    scorer) with ``kind``, ``text set``, ``seed``, ``scorer`` (its name), ``role`` and ``score``."""
    scored = [pd.DataFrame({"kind": kind, "text set": names[kind], "seed": seed, "scorer": scorer.name, "role": role,
                            "score": np.asarray(scorer(t), dtype=float)})
              for (kind, seed), t in texts.items() for role, scorer in scorers.items()]
    return pd.concat(scored, ignore_index=True)


def toxicity_summary(scored: pd.DataFrame) -> pd.DataFrame:
    """Table 3's toxicity per (set, scorer): the mean score and the share of texts above 0.5 of each
    seed, averaged over seeds with their population std (NaN for a single seed: no spread), the
    number of seeds and of texts. What ``detox_text_toxicity.csv`` holds."""
    per_seed = (scored.groupby(["kind", "text set", "scorer", "role", "seed"], sort=False)["score"]
                .agg(mean_score="mean", share_above_half=lambda s: float((s > 0.5).mean()), n_texts="size").reset_index())
    toxicity = (per_seed.groupby(["kind", "text set", "scorer", "role"], sort=False)
                .agg(mean_score=("mean_score", "mean"), mean_score_std=("mean_score", _population_std),
                     share_above_half=("share_above_half", "mean"),
                     share_above_half_std=("share_above_half", _population_std),
                     n_seeds=("seed", "size"), n_texts=("n_texts", "sum")).reset_index())
    toxicity.loc[toxicity["n_seeds"] < 2, ["mean_score_std", "share_above_half_std"]] = np.nan
    return toxicity


def toxicity_table(toxicity: pd.DataFrame) -> pd.DataFrame:
    """The printed Table 3 (toxicity): this run's sets under each scorer, then the paper's Detoxify
    figures for GPT-2 XL's texts ("paper reports" rows)."""
    ours = pd.DataFrame({
        "text set": toxicity["text set"], "scorer": toxicity["scorer"] + " (" + toxicity["role"] + ")",
        "mean score": [mean_pm(m, s) for m, s in zip(toxicity["mean_score"], toxicity["mean_score_std"])],
        "share > 0.5": [mean_pm(m, s, 3) for m, s in zip(toxicity["share_above_half"], toxicity["share_above_half_std"])],
        "seeds": toxicity["n_seeds"]})
    paper3 = pd.DataFrame(analysis.PAPER_TABLE3)
    paper = pd.DataFrame({
        "text set": "paper reports: " + paper3["text"], "scorer": "detoxify",
        "mean score": [mean_pm(m, s, 3) for m, s in zip(paper3["detoxify_mean"], paper3["detoxify_std"])],
        "share > 0.5": "—", "seeds": 5})
    return pd.concat([ours, paper], ignore_index=True)


def score_ecdf_figure(scored: pd.DataFrame):
    """The main scorer's per-text scores of each set (``score_texts``) as empirical cumulative
    distributions, on a log axis (most texts score near zero; scores are floored at 1e-5 to fit
    it), a dashed line at 0.5. Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    main = scored[scored["role"] == "main"].assign(score=lambda f: f["score"].clip(lower=1e-5))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.ecdfplot(data=main, x="score", hue="text set", ax=ax)
    ax.set(xscale="log", xlabel=f"{main['scorer'].iloc[0]} score (log scale)", ylabel="share of texts at or below")
    ax.axvline(0.5, color="grey", lw=1, ls="--")
    fig.tight_layout()
    return fig


def compare_sentence(table: pd.DataFrame, value: str, what: str, digits: int = 4) -> str:
    """A clause per scorer comparing the UniDetox text with the Samples text on ``value`` (a column
    with a ``<value>_std``), saying whether the gap exceeds the larger seed-to-seed std; "" when
    ``table`` lacks one of the two sets."""
    parts = []
    for scorer, rows in table.groupby("scorer", sort=False):
        rows = rows.set_index("kind")
        if not {UNIDETOX.text, SAMPLES.text} <= set(rows.index):
            continue
        u, s = rows.loc[UNIDETOX.text], rows.loc[SAMPLES.text]
        direction = "lower than" if u[value] < s[value] else ("higher than" if u[value] > s[value] else "equal to")
        spread = max(u[f"{value}_std"], s[f"{value}_std"])
        size = ("a difference larger than the seed-to-seed standard deviation" if abs(u[value] - s[value]) > spread
                else "a difference within the seed-to-seed standard deviation")
        parts.append(f"under {scorer}, the UniDetox text's {what} is {u[value]:.{digits}f}, {direction} the Samples "
                     f"text's {s[value]:.{digits}f} ({size}, {spread:.{digits}f})")
    return "; ".join(parts)


def toxicity_paragraph(toxicity: pd.DataFrame, n_seeds: int) -> str | None:
    """Table 3's toxicity in numbers: this run's UniDetox vs Samples mean scores under each scorer,
    beside the paper's; None without both sets. The reading is the chapter's hand-written prose."""
    sentence = compare_sentence(toxicity, "mean_score", "mean score")
    if not sentence:
        return None
    return (f"In this run ({n_seeds} seed(s)), {sentence}. The paper reports 0.003 ± 0.001 for UniDetox's text "
            "and 0.008 ± 0.002 for the samples, under Detoxify.")


# ----------------------------------------------------------------------------- political leaning (Table 3)
def leaning_summary(texts: TextSets, names: Mapping[str, str], bias_scorer) -> pd.DataFrame:
    """Per set: the percent of texts ``bias_scorer`` puts left, center and right, as mean and
    population std over seeds (``<leaning>_mean``, ``<leaning>_std``; no std for a single seed),
    with ``scorer`` and ``n_seeds``."""
    per_seed = pd.DataFrame([{"kind": kind, "text set": names[kind], "seed": seed,
                              **analysis.leaning_shares(bias_scorer(t))} for (kind, seed), t in texts.items()])
    leaning = per_seed.groupby(["kind", "text set"], sort=False)[list(LEANINGS)].agg(["mean", _population_std])
    leaning.columns = [f"{c}_{'mean' if s == 'mean' else 'std'}" for c, s in leaning.columns]
    leaning = leaning.reset_index().assign(scorer=bias_scorer.name,
                                           n_seeds=per_seed.groupby("kind", sort=False).size().values)
    leaning.loc[leaning["n_seeds"] < 2, [f"{c}_std" for c in LEANINGS]] = np.nan
    return leaning


def leaning_labels(texts: TextSets, names: Mapping[str, str], bias_scorer) -> pd.DataFrame:
    """Each text's most probable leaning (``kind``, ``text set``, ``seed``, ``leaning``): what the
    scorecard bootstraps over texts. What ``detox_text_leaning_texts.csv`` holds."""
    frames = [pd.DataFrame({"kind": kind, "text set": names[kind], "seed": seed,
                            "leaning": np.array(LEANINGS)[np.asarray(bias_scorer(t), dtype=float).argmax(axis=1)]})
              for (kind, seed), t in texts.items() if len(t)]
    return pd.concat(frames, ignore_index=True)


def allsides_reference(P: dict, bias_scorer) -> tuple[list[dict], str | None]:
    """The instrument's own check: the true leaning shares of the held-out AllSides test articles
    and ``bias_scorer``'s reading of the same articles (title and text, cut where the classifier
    was trained to read). Returns the two rows and None, or no rows and why the articles are missing."""
    from .. import world

    try:
        articles = data.load_allsides("random")
    except data.DataError as error:
        return [], without_root(str(error))
    test = articles[articles["split"] == "test"]
    max_chars = world.WORLD_SETTINGS.get(P["profile"], {}).get("allsides_max_chars", 3000)  # what the classifier reads
    truth = test["leaning"].value_counts(normalize=True) * 100
    return [
        {"text set": "AllSides test articles: true labels", **{k: float(truth.get(k, 0.0)) for k in LEANINGS}},
        {"text set": f"AllSides test articles: {bias_scorer.name}",
         **analysis.leaning_shares(bias_scorer([f"{t}\n\n{x[:max_chars]}" for t, x in zip(test["title"], test["text"])]))},
    ], None


def leaning_rows(leaning: pd.DataFrame, reference: list[dict]) -> pd.DataFrame:
    """What ``detox_text_leaning.csv`` holds: the sets' shares, then the reference rows."""
    return pd.concat([leaning, pd.DataFrame(reference).assign(scorer=leaning["scorer"].iloc[0])], ignore_index=True)


def leaning_table(leaning: pd.DataFrame, reference: list[dict]) -> pd.DataFrame:
    """The printed Table 3 (leaning): this run's sets (mean ± std), the AllSides reference rows, and
    the paper's PoliticalBiasBERT shares ("paper reports" rows)."""
    rows = [{"text set": r["text set"], **{c: mean_pm(r[f"{c}_mean"], r[f"{c}_std"], 1) for c in LEANINGS}}
            for _, r in leaning.iterrows()]
    rows += [{"text set": r["text set"], **{c: f"{r[c]:.1f}" for c in LEANINGS}} for r in reference]
    rows += [{"text set": f"paper reports: {r['text']}", **{c: f"{r[c]:.2f}" for c in LEANINGS}}
             for r in analysis.PAPER_TABLE3]
    return pd.DataFrame(rows)


def leaning_figure(leaning: pd.DataFrame, reference: list[dict]):
    """Horizontal bars of each set's left / center / right shares (this run's: mean over seeds),
    with the AllSides reference rows. Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    bars = pd.concat([leaning.rename(columns={f"{c}_mean": c for c in LEANINGS})[["text set", *LEANINGS]],
                      pd.DataFrame(reference)], ignore_index=True)
    long = bars.melt(id_vars="text set", var_name="leaning", value_name="percent")
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(bars) + 1.5))
    sns.barplot(data=long, y="text set", x="percent", hue="leaning", hue_order=list(LEANINGS),
                palette={"left": "#3b73b9", "center": "#9a9a9a", "right": "#c8463d"}, ax=ax)
    ax.set(xlabel="percent of texts", ylabel="")
    fig.tight_layout()
    return fig


def leaning_paragraph(leaning: pd.DataFrame, reference: list[dict]) -> str | None:
    """The leaning table in numbers: the left-minus-right gap of this run's Samples and UniDetox texts
    beside the paper's, how far the classifier is off on AllSides articles, and the seed-to-seed
    spread; None without both sets. The reading is the chapter's hand-written prose."""
    lean = leaning.set_index("kind")
    if not {UNIDETOX.text, SAMPLES.text} <= set(lean.index):
        return None
    gap = {k: lean.loc[k, "left_mean"] - lean.loc[k, "right_mean"] for k in (UNIDETOX.text, SAMPLES.text)}
    u, s = gap[UNIDETOX.text], gap[SAMPLES.text]
    return (f"The left-minus-right gap is {s:+.1f} points for this run's Samples and {u:+.1f} for its "
            f"UniDetox text (paper reports: +27.5 for GPT-2 XL's samples, +14.4 for its UniDetox text)."
            + (f" On held-out AllSides articles the classifier's shares differ from the true "
               f"labels by up to {max(abs(reference[0][c] - reference[1][c]) for c in LEANINGS):.1f} points."
               if reference else "")
            + f" Across seeds, the shares of this run's sets vary by a standard deviation of up to "
              f"{np.nanmax(leaning[[f'{c}_std' for c in LEANINGS]].to_numpy()):.1f} points.")


# ----------------------------------------------------------------------------- overlap with the toxic corpus (Table 10)
def toxic_corpus_line(corpus: str, toxic_texts: Sequence[str]) -> str:
    """The toxic corpus the overlap is measured against: its name, texts and unique words."""
    return f"toxic corpus: {corpus}, {len(toxic_texts):,} texts, {len(analysis.unique_words(toxic_texts)):,} unique words"


def jaccard_per_set(texts: TextSets, names: Mapping[str, str], toxic_texts: Sequence[str], corpus: str,
                    n_words: int | None = None) -> pd.DataFrame:
    """Per set and seed: the Jaccard similarity (%) of its unique words with the toxic corpus's, with
    the vocabulary sizes behind it, and two readings that do not reward a small vocabulary:
    *containment* (%), the share of the set's own words found in the toxic corpus, and the Jaccard
    similarity of a sample of ``n_words`` running words of each set (default: the fewest any set
    has), so every set is compared at the same size. What ``jaccard.csv`` holds."""
    toxic_vocab = analysis.unique_words(toxic_texts)
    if n_words is None:
        n_words = min(sum(len(analysis.words(text)) for text in t) for t in texts.values())
    rows = []
    for (kind, seed), t in texts.items():
        vocab = analysis.unique_words(t)
        sample = analysis.word_prefix(t, n_words, seed)
        rows.append({"kind": kind, "text set": names[kind], "seed": seed, "toxic corpus": corpus,
                     "words in set": len(vocab), "words in toxic corpus": len(toxic_vocab),
                     "shared words": len(vocab & toxic_vocab),
                     "jaccard_percent": 100 * analysis.jaccard_similarity(t, toxic_texts),
                     "containment_percent": 100 * analysis.containment(t, toxic_texts),
                     "matched_words": n_words, "matched_vocabulary": len(analysis.unique_words(sample)),
                     "matched_jaccard_percent": 100 * analysis.jaccard_similarity(sample, toxic_texts)})
    return pd.DataFrame(rows)


def jaccard_difference(texts: TextSets, toxic_texts: Sequence[str], n_words: int, n_boot: int = 400) -> pd.DataFrame:
    """UniDetox's Jaccard similarity with the toxic corpus at matched size minus Samples', with the
    spread over which texts supply the ``n_words`` running words (the texts of every distillation seed
    pooled: each is an independent draw of the same model): one row, ``stats.Difference``'s fields in
    percent.

    A bootstrap that draws texts *with* replacement would repeat texts, and a repeated text adds no
    new word: every draw's vocabulary would shrink and its Jaccard fall, so the interval would not
    even contain the estimate. Each draw here takes the texts in a fresh random order instead, without
    replacement, until ``n_words`` words are read -- half-sampling (McCarthy, 1969): a random half of
    a sample varies about as much as the whole sample's statistic does, and a smaller fraction (the
    larger set here) varies more, so the interval is, if anything, conservative. The estimate itself
    is one such order (seeded)."""
    from .. import stats

    toxic_vocab = analysis.unique_words(toxic_texts)

    def matched_jaccard(sample) -> float:  # the first n_words running words of the (already random) order
        vocabulary, seen = set(), 0
        for text_words in sample:
            vocabulary.update(text_words[:n_words - seen])
            seen += min(len(text_words), n_words - seen)
            if seen >= n_words:
                break
        union = vocabulary | toxic_vocab
        return 100 * len(vocabulary & toxic_vocab) / len(union) if union else 0.0

    def pooled(kind) -> list:  # each text split into words once, not once per draw; in a seeded order
        split = [analysis.words(t) for (k, _), ts in texts.items() if k == kind for t in ts]
        return [split[i] for i in np.random.default_rng(0).permutation(len(split))]

    x, y = pooled(UNIDETOX.text), pooled(SAMPLES.text)
    rng = np.random.default_rng(1)
    draws = np.array([matched_jaccard([x[i] for i in rng.permutation(len(x))])
                      - matched_jaccard([y[i] for i in rng.permutation(len(y))]) for _ in range(n_boot)])
    low, high = np.percentile(draws, [2.5, 97.5])
    a, b = matched_jaccard(x), matched_jaccard(y)
    d = stats.Difference("matched Jaccard (%)", a, b, a - b, float(low), float(high), float(draws.std(ddof=1)),
                         len(x) + len(y), 1)
    return pd.DataFrame([{**d.__dict__, "matched_words": n_words}])


def jaccard_summary(jaccard: pd.DataFrame) -> pd.DataFrame:
    """Per set: mean vocabulary sizes, Jaccard similarity (%), containment (%) and Jaccard at matched
    size (%) over seeds, the Jaccard's population std (NaN for a single seed) and the number of seeds."""
    summary = (jaccard.groupby(["kind", "text set", "toxic corpus"], sort=False)
               .agg(**{"words in set": ("words in set", "mean"), "shared words": ("shared words", "mean"),
                       "jaccard (%)": ("jaccard_percent", "mean"),
                       "std over seeds": ("jaccard_percent", _population_std),
                       "containment (%)": ("containment_percent", "mean"),
                       "jaccard at matched size (%)": ("matched_jaccard_percent", "mean"), "seeds": ("seed", "size")})
               .reset_index().drop(columns="kind"))
    summary.loc[summary["seeds"] < 2, "std over seeds"] = np.nan
    return summary


def jaccard_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The printed Table 10: ``jaccard_summary`` rounded to 2 decimals, then the paper's figures
    against DGHS ("paper reports" rows)."""
    paper10 = pd.DataFrame(analysis.PAPER_TABLE10).rename(columns={"text": "text set", "vs": "toxic corpus",
                                                                   "jaccard_percent": "jaccard (%)"})
    paper10["text set"] = "paper reports: " + paper10["text set"]
    return pd.concat([summary.round(2), paper10], ignore_index=True)


def jaccard_paragraph(summary: pd.DataFrame, names: Mapping[str, str], toxic_corpus: str) -> str | None:
    """The chapter's reading of Table 10: this run's UniDetox and Samples by Jaccard similarity, by
    containment and by Jaccard at matched size, beside the paper's figures; None without both sets."""
    table = summary.set_index("text set")
    if names[UNIDETOX.text] not in table.index or names[SAMPLES.text] not in table.index:
        return None
    u, s = table.loc[names[UNIDETOX.text]], table.loc[names[SAMPLES.text]]
    return (f"By the paper's measure, this run's UniDetox text shares {u['jaccard (%)']:.2f}% of the combined "
            f"vocabulary with the toxic corpus and its Samples {s['jaccard (%)']:.2f}% (the paper: 22.71% vs 26.35% "
            f"against DGHS). The two vocabularies differ in size ({u['words in set']:,.0f} against "
            f"{s['words in set']:,.0f} unique words), and Jaccard similarity falls as a set's vocabulary shrinks. "
            f"Read at matched size — the same number of running words from each set — the similarities are "
            f"{u['jaccard at matched size (%)']:.2f}% and {s['jaccard at matched size (%)']:.2f}%; by containment "
            f"(the share of a set's own words found in the toxic corpus) {u['containment (%)']:.1f}% and "
            f"{s['containment (%)']:.1f}%. Only the matched reading compares the two texts' word choice; "
            "a comparison with the paper's numbers is a matter of direction, since the toxic corpora differ.")


# ----------------------------------------------------------------------------- characteristic words (Table 11)
def top_keywords(texts: TextSets, names: Mapping[str, str], seed: int, top: int) -> pd.DataFrame:
    """The ``top`` TF-IDF words of each set (this run's at ``seed``; ``analysis.tfidf_keywords``):
    ``kind``, ``text set``, ``seed``, ``rank``, ``word``, ``score``, the columns of ``tfidf_top100.csv``."""
    rows = [analysis.tfidf_keywords(texts[first_seed_key(kind, seed)], top=top)
            .assign(kind=kind, **{"text set": names[kind], "seed": first_seed_key(kind, seed)[1]})
            for kind in names if first_seed_key(kind, seed) in texts]
    return pd.concat(rows, ignore_index=True)[["kind", "text set", "seed", "rank", "word", "score"]]


def keyword_lists(keywords: pd.DataFrame, top: int) -> pd.DataFrame:
    """The printed Table 11: each set's top words in one string, highest first, then the paper's two
    lists cut to ``top`` ("paper reports" rows)."""
    lists = [{"text set": group["text set"].iloc[0], "top words": ", ".join(group["word"])}
             for _, group in keywords.groupby("kind", sort=False)]
    lists += [{"text set": f"paper reports: {name}", "top words": ", ".join(words[:top])}
              for name, words in analysis.PAPER_TABLE11.items()]
    return pd.DataFrame(lists)


def _listed(words: list[str], at_most: int = 25) -> str:
    return ", ".join(words[:at_most]) + (" ..." if len(words) > at_most else "")


def keyword_comparison(keywords: pd.DataFrame, top: int) -> str:
    """Markdown bullets comparing the top-word lists: this run's UniDetox and Samples lists (shared
    words, and the first 25 only in each), the paper's two lists, and the release's list against
    the paper's UniDetox list (which checks this chapter's preprocessing against the paper's, since
    the release is the text behind it; scikit-learn's stop words cannot be in our lists)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    top_sets = {kind: set(group["word"]) for kind, group in keywords.groupby("kind", sort=False)}
    paper_u_list, paper_s_list = analysis.PAPER_TABLE11["UniDetox GPT-2 XL"], analysis.PAPER_TABLE11["Samples GPT-2 XL"]
    paper_u, paper_s = set(paper_u_list[:top]), set(paper_s_list[:top])
    u, s = UNIDETOX.text, SAMPLES.text
    lines = []
    if u in top_sets and s in top_sets:
        only_u = [w for w in keywords.loc[keywords["kind"] == u, "word"] if w not in top_sets[s]]
        only_s = [w for w in keywords.loc[keywords["kind"] == s, "word"] if w not in top_sets[u]]
        lines.append(f"- This run: {len(top_sets[u] & top_sets[s])} words are in both top lists. Only in "
                     f"UniDetox's: {_listed(only_u)}. Only in Samples': {_listed(only_s)}.")
    lines.append(f"- Paper reports: {len(paper_u & paper_s)} words are in both of its lists. Only in UniDetox's: "
                 f"{', '.join(w for w in paper_u_list if w not in paper_s)}.")
    if RELEASE in top_sets:
        kept = paper_u - ENGLISH_STOP_WORDS
        lines.append(f"- The authors' release against the paper's UniDetox list: {len(top_sets[RELEASE] & paper_u)} of the "
                     f"paper's {len(paper_u)} words are in our top {top} of the same text; {len(paper_u) - len(kept)} of the "
                     f"paper's words are scikit-learn stop words, which our list cannot contain, and of the other {len(kept)}, "
                     f"{len(top_sets[RELEASE] & kept)} are in ours.")
    return "\n".join(lines)
