"""Who pays for detoxification: the library functions against hand computations."""

import numpy as np
import pandas as pd
import pytest
import torch

from unidetox_core import finetune, forward, group_cost


def test_text_nll_matches_the_training_loss(tiny_gpt2):
    model, tok = tiny_gpt2
    texts = ["the police said", "a new school year and the team"]
    scored = group_cost.text_nll(model, tok, texts, batch_size=1)
    for text, row in zip(texts, scored.itertuples()):
        ids, mask = forward.right_pad(finetune.tokenize_texts(tok, [text], 128), tok.pad_token_id)
        with torch.no_grad():
            nll, n = finetune.summed_token_nll(model.eval(), ids, mask)
        assert row.nll == pytest.approx(float(nll), rel=1e-5) and row.tokens == n
    batched = group_cost.text_nll(model, tok, texts, batch_size=2)  # padding changes nothing
    assert np.allclose(batched["nll"], scored["nll"], rtol=1e-5) and batched["tokens"].tolist() == scored["tokens"].tolist()


def gap_rows(group_nll, news_nll):
    """Per-text rows: two statements about "muslim" and two news texts, one token each."""
    return pd.DataFrame({"prompt_id": range(4), "seed": 0, "domain": ["muslim", "muslim", "news", "news"],
                         "nll": [*group_nll, *news_nll], "tokens": [1.0] * 4})


def test_gap_changes_by_hand():
    rows = {"base": gap_rows([2.0, 2.0], [1.0, 1.0]), "UniDetox": gap_rows([3.0, 3.0], [1.0, 1.0])}
    [row] = group_cost.gap_changes(rows, "base", n_boot=200).itertuples()
    assert (row.group, row.gap, row.base_gap, row.change) == ("muslim", 2.0, 1.0, 1.0)
    assert (row.low, row.high, row.verdict) == (1.0, 1.0, "holds")  # every draw: +1 nat per token for the group


def test_coverage_rows_and_group_changes():
    prompts = pd.DataFrame({"group": ["muslim", "women"], "label": ["neutral", "neutral"]})
    base = pd.DataFrame({"prompt_id": [0, 0, 1, 1], "seed": 0,
                         "continuation": ["the mosque", "a day", "women vote", "her sisters"]})
    rows = group_cost.coverage_rows(base, prompts).set_index("prompt_id")
    assert rows.loc[0, "names_group"] == 0.5 and rows.loc[1, "names_group"] == 0.5  # "sisters" is not on the list
    detox = base.assign(continuation=["a day", "a day", "a day", "a day"])
    changes = group_cost.group_changes({"base": group_cost.coverage_rows(base, prompts),
                                        "UniDetox": group_cost.coverage_rows(detox, prompts)},
                                       "base", "names_group", label="neutral", n_boot=200)
    assert changes["change"].tolist() == [-0.5, -0.5] and set(changes["group"]) == {"muslim", "women"}
    summary = group_cost.who_pays(changes.assign(change=[-0.5, -0.2]))
    assert summary.iloc[0]["largest"] == "women -0.20, muslim -0.50" and summary.iloc[0]["mean change"] == pytest.approx(-0.35)


def test_with_groups():
    rows = pd.DataFrame({"prompt_id": [1, 0], "toxic": [1.0, 0.0]})
    prompts = pd.DataFrame({"group": ["jewish", "black"], "label": ["hate", "neutral"]})
    out = group_cost.with_groups(rows, prompts)
    assert out["group"].tolist() == ["black", "jewish"] and out["label"].tolist() == ["neutral", "hate"]


def test_who_pays_claims_and_universality():
    from unidetox_core.views import who_pays as W

    cost = pd.DataFrame({
        "model": ["world:a"] * 3 + ["world:b"] * 2,
        "measure": [W.MEASURES[0]] * 2 + [W.MEASURES[1]] + [W.MEASURES[0]] * 2,
        "variant": ["UniDetox lr=1e-04", "UniDetox lr=1e-04", "UniDetox lr=1e-04", "UniDetox lr=1e-04", "Samples"],
        "group": ["muslim", "women", "muslim", "muslim", "muslim"],
        "change": [0.3, -0.1, -0.2, -0.05, 0.4], "low": [0.1, -0.3, -0.4, -0.1, 0.2], "high": [0.5, 0.1, 0.0, 0.0, 0.6],
        "verdict": ["holds", "inconclusive", "inconclusive", "does not hold", "holds"]})
    claims = W.claims_rows(cost).set_index(["model", "claim"])["verdict"]
    assert claims[("a", "UniDetox raises the perplexity gap of some group")] == "holds"
    assert claims[("a", "UniDetox lowers how often continuations of some group's neutral prompts name the group")] == "inconclusive"
    assert claims[("b", "UniDetox raises the perplexity gap of some group")] == "does not hold"  # Samples' rise is not UniDetox's
    line = W.universality_line(cost)
    assert line.startswith("Mean change of UniDetox's perplexity gap over groups: a +0.100, b -0.050")
    assert line.endswith("the direction differs between models.")


def test_text_nll_cuts_texts_to_the_models_positions(tiny_gpt2):
    model, tok = tiny_gpt2
    long = " ".join(["the news report says"] * 200)
    scored = group_cost.text_nll(model, tok, [long], max_length=10_000)
    assert scored["tokens"].iloc[0] == model.config.n_positions - 1  # every position but the start token's
