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

from .. import methods

UNIDETOX, SAMPLES = methods.get("unidetox"), methods.get("samples")
VERDICTS = ("holds", "does not hold", "inconclusive")

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


def verdict(holds, detail: str = "") -> str:
    """The fixed rule: no verdict, or a difference the chapter found "within noise", is
    inconclusive; otherwise the claim holds or does not."""
    if holds is None or "within noise" in str(detail):
        return "inconclusive"
    return "holds" if bool(holds) else "does not hold"


def beyond_spread(diff: float, spread: float, holds) -> str:
    """The verdict on a difference measured with a spread: inconclusive when ``|diff|`` is within
    ``spread``, else ``verdict(holds)``."""
    return "inconclusive" if abs(diff) <= spread else verdict(holds)


def card_row(claim: str, paper: str, shows: str, result: str, chapter: str) -> dict:
    """One row of the scorecard."""
    return {"claim": claim, "paper reports": paper, "this run shows": shows, "verdict": result, "chapter": chapter}


def _nan_to_zero(value) -> float:
    return 0.0 if pd.isna(value) else float(value)


def _both(frame_index) -> bool:
    return {UNIDETOX.text, SAMPLES.text} <= set(frame_index)


# ----------------------------------------------------------------------------- chapters 06 and 07
def results_claims_rows(claims: pd.DataFrame | None, name: str, chapter: str) -> list[dict]:
    """The claims chapter 06 or 07 checked (``<name>``: ``claim``, ``holds``, ``detail``, ``model``),
    one row per (claim, model) with the paper's figure beside it; one inconclusive row when the
    chapter has not run."""
    if claims is None:
        return [card_row(f"(claims of {name})", "", "chapter not run yet", "inconclusive", chapter)]
    return [card_row(f"{row.claim} [{str(row.model).replace('world:', '')}]", PAPER_CLAIMS.get(row.claim, ""),
                     row.detail, verdict(row.holds, row.detail), chapter)
            for row in claims.itertuples(index=False)]


# ----------------------------------------------------------------------------- chapter 08
def sensitivity_rows(sens: pd.DataFrame | None) -> list[dict]:
    """Figure 2's claim: UniDetox's grid points lie in the lower left of the perplexity-TP plane more
    often than the baselines' (share of each method's points there, from ``sensitivity.csv``)."""
    chapter = "08 sensitivity"
    if sens is None or "lower_left" not in sens:
        return [card_row("UniDetox's grid points lie in the lower left on every model", "Figure 2", "chapter not run yet",
                         "inconclusive", chapter)]
    share = sens.assign(is_unidetox=sens["method"].str.startswith(UNIDETOX.name)).groupby("is_unidetox")["lower_left"].mean()
    uni, other = share.get(True, math.nan), share.get(False, math.nan)
    measured = not (math.isnan(uni) or math.isnan(other))
    return [card_row("UniDetox's grid points lie in the lower left more often than the baselines'",
                     "Figure 2: clustered lower left", f"lower-left share: UniDetox {uni:.0%}, baselines {other:.0%}",
                     verdict(uni > other) if measured else "inconclusive", chapter)]


# ----------------------------------------------------------------------------- chapter 09
def text_toxicity_rows(tox: pd.DataFrame | None) -> list[dict]:
    """Table 3: the distilled text is less toxic than plain samples (main scorer's mean score, beyond
    the sum of the two seed-to-seed stds). No row until both sets were scored."""
    if tox is None:
        return []
    main = tox[(tox["role"] == "main") & tox["kind"].isin([UNIDETOX.text, SAMPLES.text])].set_index("kind")
    if not _both(main.index):
        return []
    u, s = main.loc[UNIDETOX.text], main.loc[SAMPLES.text]
    spread = _nan_to_zero(u["mean_score_std"]) + _nan_to_zero(s["mean_score_std"])
    diff = s["mean_score"] - u["mean_score"]
    return [card_row("Distilled text is less toxic than plain samples", "Detoxify 0.003 vs 0.008 (Table 3)",
                     f"mean score {u['mean_score']:.3f} vs {s['mean_score']:.3f} ({u['scorer']})",
                     beyond_spread(diff, spread, diff > 0), TEXT_CHAPTER)]


def text_leaning_rows(lean: pd.DataFrame | None) -> list[dict]:
    """Table 3: the distilled text is more politically balanced than plain samples (smaller
    left-right gap, beyond the seed spread of the two gaps). No row until both sets were classified."""
    if lean is None:
        return []
    lean = lean[lean["kind"].isin([UNIDETOX.text, SAMPLES.text])].set_index("kind")
    if not _both(lean.index):
        return []
    gap = (lean["left_mean"] - lean["right_mean"]).abs()
    # Spread of each gap over the distillation seeds (treating left and right as independent).
    gap_std = (lean["left_std"].fillna(0) ** 2 + lean["right_std"].fillna(0) ** 2) ** 0.5
    spread = gap_std[UNIDETOX.text] + gap_std[SAMPLES.text]
    u, s = gap[UNIDETOX.text], gap[SAMPLES.text]
    return [card_row("Distilled text is more politically balanced than plain samples",
                     "left-right gap 14.4 vs 27.5 points (Table 3)",
                     f"left-right gap {u:.1f} vs {s:.1f} points (seed spread {spread:.1f})",
                     beyond_spread(u - s, spread, u < s), TEXT_CHAPTER)]


def text_jaccard_rows(jac: pd.DataFrame | None) -> list[dict]:
    """Table 10: the distilled text shares fewer words with the toxic corpus than samples do (mean
    Jaccard % over seeds, beyond the sum of the two population stds)."""
    if jac is None:
        return []
    per_kind = jac[jac["kind"].isin([UNIDETOX.text, SAMPLES.text])].groupby("kind")["jaccard_percent"]
    j, j_std = per_kind.mean(), per_kind.std(ddof=0).fillna(0)
    if not _both(j.index):
        return []
    u, s = j[UNIDETOX.text], j[SAMPLES.text]
    spread = j_std[UNIDETOX.text] + j_std[SAMPLES.text]
    return [card_row("Distilled text shares fewer words with the toxic corpus than samples do", "22.71% vs 26.35% (Table 10)",
                     f"{u:.2f}% vs {s:.2f}% (seed spread {spread:.2f})", beyond_spread(u - s, spread, u < s),
                     TEXT_CHAPTER)]


# ----------------------------------------------------------------------------- chapter 10
def alignment_rows(align: pd.DataFrame | None) -> list[dict]:
    """Eq. 5: the distilled text's gradients align more with -tau_toxic than the samples' (mean
    cosine per set, beyond two standard errors of the difference)."""
    if align is None:
        return []
    by_set = align.groupby("set")["cosine"]
    c, se = by_set.mean(), (by_set.std(ddof=1) / by_set.size() ** 0.5).fillna(0)
    u, s = ALIGNMENT_SETS
    if not {u, s} <= set(c.index):
        return []
    noise = 2 * (se[u] ** 2 + se[s] ** 2) ** 0.5  # two standard errors of the difference
    return [card_row("Distilled text's gradients align more with -tau_toxic than samples' (Eq. 5)",
                     "derived, not measured in the paper",
                     f"mean cosine {c[u]:.4f} vs {c[s]:.4f} (2 standard errors of the difference: {noise:.4f})",
                     beyond_spread(c[u] - c[s], noise, c[u] > c[s]), "10 why it works")]


# ----------------------------------------------------------------------------- chapter 04
# (text a, text b, claim, what the paper reports, whether a should have the lower TP): for False,
# the claim is that the two texts are about as good (within 0.05 TP).
CONTROL_CLAIMS = (
    ("unidetox_alpha", "unidetox", "alpha = 0.05 works about as well as alpha = 0.1 (within 0.05 TP)",
     "Table 5: similar in most cases", False),
    ("unidetox", "cut_only", "The contrast with the toxic model, not the plausibility cut alone, detoxifies",
     "not tested in the paper", True),
    ("unidetox", "clean_news", "Distilled text detoxifies more than the same amount of clean news",
     "not tested in the paper (DAPT is related work)", True),
)


def proportion_noise(p: float, n: int) -> float:
    """Two binomial standard errors of a proportion ``p`` over ``n`` prompts, at least 2 / n (one
    seed per text, so the noise is that of TP itself, as chapter 04 computes it)."""
    return 2 * max((p * (1 - p) / n) ** 0.5, 1 / n)


def controls_rows(controls: pd.DataFrame | None, n_val: int) -> list[dict]:
    """Table 5 and the two controls the paper lacks, from ``controls.csv``: each text's best
    validation TP over the step grid compared with another's, against the noise of a proportion
    over ``n_val`` validation prompts (``CONTROL_CLAIMS``). A comparison whose texts are missing
    gives no row."""
    if controls is None:
        return []
    best = controls[controls["text"] != "none"].groupby("text")["TP_all"].min()
    base_tp = controls.loc[controls["text"] == "none", "TP_all"].mean()
    rows = []
    for a, b, claim, paper, expect_lower in CONTROL_CLAIMS:
        if not {a, b} <= set(best.index):
            continue
        noise, diff = proportion_noise(float(best[b]), n_val), best[a] - best[b]
        if expect_lower:
            result = "inconclusive" if abs(diff) < noise else verdict(diff < 0)
        else:
            result = verdict(abs(diff) <= 0.05)
        rows.append(card_row(claim, paper, f"best val TP {best[a]:.2f} ({a}) vs {best[b]:.2f} ({b}), noise ±{noise:.2f}; "
                                           f"base {base_tp:.2f}", result, "04 distillation"))
    return rows


def verdict_counts(card: pd.DataFrame) -> pd.DataFrame:
    """How many claims of ``card`` hold, do not hold, or are inconclusive (most frequent first)."""
    return card["verdict"].value_counts().rename_axis("verdict").reset_index(name="claims")
