"""What chapter 12 (the reproduction scorecard) shows: one row per claim of the paper, with what the
paper reports, what this run shows and a verdict computed from the numbers by a fixed rule.

Each ``*_rows`` function reads what one chapter wrote (a frame from ``read_result``, or None when
that chapter has not run) and returns its scorecard rows, so the card is the concatenation of
their lists in the chapters' order.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import methods, stats

UNIDETOX, SAMPLES = methods.get("unidetox"), methods.get("samples")
VERDICTS = stats.VERDICTS

# What the paper reports for each claim that chapters 06 and 07 check (``tables.check_claims``).
PAPER_CLAIMS = {
    "UniDetox lowers TP on the seen (ID) domains": "GPT-2 XL: TP ID 0.53 -> 0.40 (lr 5e-5), 0.46 (lr 1e-5)",
    "UniDetox lowers TP on the unseen (OOD) domains": "GPT-2 XL: TP OOD 0.41 -> 0.25 (lr 5e-5), 0.33 (lr 1e-5)",
    "UniDetox has the lowest TP ID": "lowest TP of all methods on every model (Tables 1, 2)",
    "UniDetox has the lowest TP OOD": "lowest TP OOD on every model (Tables 1, 2)",
    "UniDetox keeps perplexity at or below the base model's": "GPT-2 XL: PPL 17.28 -> 10.38 / 15.23",
    "UniDetox keeps at least 80% of the base model's Dist-1": "GPT-2 XL: Dist-1 0.26 -> 0.22 (lr 5e-5), 0.24 (lr 1e-5)",
    "PrePrompt Short does not lower TP ID": "no positive effect (0.53 -> 0.58)",
    "PrePrompt Long does not lower TP ID": "worsens TP (0.53 -> 0.63)",
    "Samples lowers TP ID, but less than UniDetox": "0.53 -> 0.48, fourth best",
}
RESULTS_CLAIMS = (("results_source_claims.csv", "06 results on the source model"),
                  ("results_across_models_claims.csv", "07 across models"))
TEXT_CHAPTER = "09 the detoxifying text"
ALIGNMENT_SETS = ("UniDetox", "Samples")  # the names chapter 10 gives the two sets in alignment.csv


def read_result(results: str | Path, name: str) -> pd.DataFrame | None:
    """The result table ``name`` of the results folder, or None when its chapter has not run."""
    path = Path(results) / name
    return pd.read_csv(path) if path.exists() else None


def spread_verdict(diff: float, spread: float, expect: str) -> str:
    """``stats.verdict`` on ``diff ± spread``, for the results whose chapters keep only a mean and a
    spread over distillation seeds (not per-text values): the interval is named as such in the row."""
    return stats.verdict((diff - spread, diff + spread), expect=expect)


def card_row(claim: str, paper: str, shows: str, result: str, chapter: str) -> dict:
    """One row of the scorecard."""
    return {"claim": claim, "paper reports": paper, "this run shows": shows, "verdict": result, "chapter": chapter}


def _nan_to_zero(value) -> float:
    return 0.0 if pd.isna(value) else float(value)


def _both(frame_index) -> bool:
    return {UNIDETOX.text, SAMPLES.text} <= set(frame_index)


# ----------------------------------------------------------------------------- chapters 06 and 07
def results_claims_rows(claims: pd.DataFrame | None, name: str, chapter: str) -> list[dict]:
    """The claims chapter 06 or 07 checked (``<name>``: ``claim``, ``verdict``, ``detail``, ``model``;
    ``tables.run_claims``), one row per (claim, model) with the paper's figure beside it; one
    not-testable row when the chapter has not run."""
    if claims is None:
        return [card_row(f"(claims of {name})", "", "chapter not run yet", "not testable here", chapter)]
    return [card_row(f"{row.claim} [{str(row.model).replace('world:', '')}]", PAPER_CLAIMS.get(row.claim, ""),
                     f"one build: {row.detail}", row.verdict, chapter)
            for row in claims.itertuples(index=False)]


# What the paper reports for each claim decided over replicates (``replicates.CORE_CLAIMS``).
PAPER_REPLICATE_CLAIMS = {
    "toxic": "the toxic GPT-2 XL is more toxic (App. B.1)",
    "base": "GPT-2 XL: TP 0.53 -> 0.40 / 0.46 ID (Table 1)",
    "samples": "Samples lowers TP less than UniDetox (Table 1)",
    "cut_only": "not tested in the paper",
}


def replicate_rows(rep: pd.DataFrame | None) -> list[dict]:
    """The core claims decided over independent builds of the source model's pipeline (chapter 06's
    ``replicates.csv``), labelled with the number of builds."""
    if rep is None:
        return []
    return [card_row(f"{row.claim} [{row.replicates} builds]",
                     PAPER_REPLICATE_CLAIMS.get(row.a if row.a == "toxic" else row.b, ""), row.detail, row.verdict,
                     "06 results on the source model") for row in rep.itertuples(index=False)]


# ----------------------------------------------------------------------------- chapter 08
def sensitivity_rows(sens: pd.DataFrame | None, min_points: int = 3) -> list[dict]:
    """Figure 2's claim: UniDetox's grid points lie in the lower left of the perplexity-TP plane more
    often than the baselines' (share of each method's points there, from ``sensitivity.csv``), read
    only on models where UniDetox has at least ``min_points`` points; not testable where it has fewer."""
    chapter, claim = "08 sensitivity", "UniDetox's grid points lie in the lower left more often than the baselines'"
    if sens is None or "lower_left" not in sens:
        return [card_row(claim, "Figure 2: clustered lower left", "chapter not run yet", "not testable here", chapter)]
    is_unidetox = sens["method"].str.startswith(UNIDETOX.name)
    if "model" in sens:
        counts = sens[is_unidetox].groupby("model").size()
        enough = counts.index[counts >= min_points]
        sens, is_unidetox = sens[sens["model"].isin(enough)], is_unidetox[sens["model"].isin(enough)]
        if sens.empty:
            return [card_row(claim, "Figure 2: clustered lower left",
                             f"UniDetox has fewer than {min_points} grid points on every model", "not testable here", chapter)]
    share = sens.assign(is_unidetox=is_unidetox).groupby("is_unidetox")["lower_left"].mean()
    uni, other = share.get(True, math.nan), share.get(False, math.nan)
    measured = not (math.isnan(uni) or math.isnan(other))
    return [card_row(claim, "Figure 2: clustered lower left", f"lower-left share: UniDetox {uni:.0%}, baselines {other:.0%}",
                     stats.verdict((uni - other, uni - other), expect="higher") if measured else "not testable here", chapter)]


# ----------------------------------------------------------------------------- chapter 09
def text_toxicity_rows(tox: pd.DataFrame | None, scores: pd.DataFrame | None = None) -> list[dict]:
    """Table 3: the distilled text is less toxic than plain samples (main scorer's mean score). With
    the per-text scores (``detox_text_scores.csv``) the interval is a bootstrap over texts, the texts
    of every distillation seed pooled (each is an independent draw of the same model); without them,
    the difference ± the sum of the seed-to-seed stds. No row until both sets were scored."""
    if tox is None:
        return []
    main = tox[(tox["role"] == "main") & tox["kind"].isin([UNIDETOX.text, SAMPLES.text])].set_index("kind")
    if not _both(main.index):
        return []
    u, s = main.loc[UNIDETOX.text], main.loc[SAMPLES.text]
    claim, paper = "Distilled text is less toxic than plain samples", "Detoxify 0.003 vs 0.008 (Table 3)"
    if scores is not None:
        per_text = scores[scores["role"] == "main"]
        d = stats.unpaired_difference(per_text.loc[per_text["kind"] == UNIDETOX.text, "score"],
                                      per_text.loc[per_text["kind"] == SAMPLES.text, "score"])
        return [card_row(claim, paper, f"mean score {d.a:.3f} vs {d.b:.3f} ({u['scorer']}), difference {d.interval(3)} "
                         f"(bootstrap over texts)", stats.verdict(d, expect="lower"), TEXT_CHAPTER)]
    spread = _nan_to_zero(u["mean_score_std"]) + _nan_to_zero(s["mean_score_std"])
    diff = s["mean_score"] - u["mean_score"]
    return [card_row(claim, paper, f"mean score {u['mean_score']:.3f} vs {s['mean_score']:.3f} ({u['scorer']}; interval: "
                     f"the difference ± the sum of the seed stds, {spread:.3f})", spread_verdict(diff, spread, "higher"),
                     TEXT_CHAPTER)]


def _leaning_gap(labels) -> float:
    return 100 * abs(float((labels == "left").mean()) - float((labels == "right").mean()))


def text_leaning_rows(lean: pd.DataFrame | None, labels: pd.DataFrame | None = None) -> list[dict]:
    """Table 3: the distilled text is more politically balanced than plain samples (smaller left-right
    gap). With each text's leaning (``detox_text_leaning_texts.csv``) the interval is a bootstrap over
    texts; without it, the gap difference ± the seed spread of the two gaps. No row until both sets
    were classified."""
    if lean is None:
        return []
    lean = lean[lean["kind"].isin([UNIDETOX.text, SAMPLES.text])].set_index("kind")
    if not _both(lean.index):
        return []
    claim, paper = "Distilled text is more politically balanced than plain samples", "left-right gap 14.4 vs 27.5 points (Table 3)"
    if labels is not None:
        d = stats.unpaired_difference(labels.loc[labels["kind"] == UNIDETOX.text, "leaning"].to_numpy(),
                                      labels.loc[labels["kind"] == SAMPLES.text, "leaning"].to_numpy(), statistic=_leaning_gap)
        return [card_row(claim, paper, f"left-right gap {d.a:.1f} vs {d.b:.1f} points, difference {d.interval(1)} "
                         "(bootstrap over texts)", stats.verdict(d, expect="lower"), TEXT_CHAPTER)]
    gap = (lean["left_mean"] - lean["right_mean"]).abs()
    # Spread of each gap over the distillation seeds (treating left and right as independent).
    gap_std = (lean["left_std"].fillna(0) ** 2 + lean["right_std"].fillna(0) ** 2) ** 0.5
    spread = gap_std[UNIDETOX.text] + gap_std[SAMPLES.text]
    u, s = gap[UNIDETOX.text], gap[SAMPLES.text]
    return [card_row(claim, paper, f"left-right gap {u:.1f} vs {s:.1f} points (seed spread {spread:.1f})",
                     spread_verdict(u - s, spread, "lower"), TEXT_CHAPTER)]


def text_jaccard_rows(jac: pd.DataFrame | None, difference: pd.DataFrame | None = None) -> list[dict]:
    """Table 10: the distilled text shares fewer words with the toxic corpus than samples do, read at
    matched size (Jaccard of the same number of running words from each set; mean over seeds, against
    the sum of the two population stds), with the paper's unmatched Jaccard and containment beside it."""
    if jac is None:
        return []
    measure = "matched_jaccard_percent" if "matched_jaccard_percent" in jac else "jaccard_percent"
    per_kind = jac[jac["kind"].isin([UNIDETOX.text, SAMPLES.text])].groupby("kind")
    j, j_std = per_kind[measure].mean(), per_kind[measure].std(ddof=0).fillna(0)
    if not _both(j.index):
        return []
    u, s = j[UNIDETOX.text], j[SAMPLES.text]
    spread = j_std[UNIDETOX.text] + j_std[SAMPLES.text]
    shown = f"{u:.2f}% vs {s:.2f}% (seed spread {spread:.2f})"
    if measure == "matched_jaccard_percent":
        raw, cont = per_kind["jaccard_percent"].mean(), per_kind["containment_percent"].mean()
        shown = (f"at matched size {shown}; unmatched {raw[UNIDETOX.text]:.2f}% vs {raw[SAMPLES.text]:.2f}%; "
                 f"containment {cont[UNIDETOX.text]:.1f}% vs {cont[SAMPLES.text]:.1f}%")
    claim, paper = "Distilled text shares fewer words with the toxic corpus than samples do", "22.71% vs 26.35% (Table 10)"
    if difference is not None and len(difference):
        d = difference.iloc[0]
        verdict = stats.verdict((float(d["low"]), float(d["high"])), expect="lower")
        return [card_row(claim, paper, f"at matched size {d['a']:.2f}% vs {d['b']:.2f}%, difference {d['diff']:+.2f} "
                         f"[{d['low']:+.2f}, {d['high']:+.2f}] (texts drawn in random orders)" + shown[shown.index(";"):]
                         if ";" in shown else shown, verdict, TEXT_CHAPTER)]
    return [card_row(claim, paper, shown, spread_verdict(u - s, spread, "lower"), TEXT_CHAPTER)]


# ----------------------------------------------------------------------------- chapter 10
def alignment_rows(align: pd.DataFrame | None) -> list[dict]:
    """Eq. 5: the distilled text's gradients align more with -tau_toxic than the samples' (mean
    cosine per set; the two sets' texts are independent, so ``stats.unpaired_difference``)."""
    if align is None:
        return []
    u, s = ALIGNMENT_SETS
    if not {u, s} <= set(align["set"]):
        return []
    d = stats.unpaired_difference(align.loc[align["set"] == u, "cosine"], align.loc[align["set"] == s, "cosine"])
    return [card_row("Distilled text's gradients align more with -tau_toxic than samples' (Eq. 5)",
                     "derived, not measured in the paper",
                     f"mean cosine {d.a:.4f} vs {d.b:.4f}, difference {d.interval(4)}",
                     stats.verdict(d, expect="higher"), "10 why it works")]


# ----------------------------------------------------------------------------- chapter 04
# What the paper reports on each claim of chapter 04 (``views.distillation.CONTROL_CLAIMS``), by key pair.
PAPER_CONTROLS = {
    ("unidetox", "samples"): "Table 1: Samples lowers TP less than UniDetox",
    ("unidetox", "cut_only"): "not tested in the paper",
    ("unidetox_alpha", "unidetox"): "Table 5: similar in most cases",
    ("unidetox_topk", "unidetox"): "not reported (the official code samples with top-k 50)",
    ("unidetox", "clean_news"): "not tested in the paper (DAPT is related work)",
}


def controls_rows(claims: pd.DataFrame | None) -> list[dict]:
    """Table 5 and the controls the paper lacks, from chapter 04's ``controls_claims.csv`` (``claim``,
    ``a``, ``b``, ``verdict``, ``detail``: paired intervals on the test prompts)."""
    if claims is None:
        return []
    return [card_row(row.claim, PAPER_CONTROLS.get((row.a, row.b), ""), row.detail, row.verdict, "04 distillation")
            for row in claims.itertuples(index=False)]


# ----------------------------------------------------------------------------- beyond the paper
def group_cost_rows(claims: pd.DataFrame | None) -> list[dict]:
    """The claims of the chapter on who pays (``group_cost_claims.csv``), labelled as beyond the paper."""
    if claims is None:
        return []
    return [card_row(f"{row.claim} [{row.model}] (beyond the paper)", "not measured in the paper", row.detail,
                     row.verdict, "11 who pays") for row in claims.itertuples(index=False)]


def verdict_counts(card: pd.DataFrame) -> pd.DataFrame:
    """How many claims of ``card`` get each verdict (most frequent first)."""
    return card["verdict"].value_counts().rename_axis("verdict").reset_index(name="claims")
