"""The method chapter's real decoding step and its helpers, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import torch

from unidetox_core import models
from unidetox_core.views import method as views


def test_real_step_samples_by_ratio_among_the_plausible_tokens(tiny_gpt2_path, tiny_gpt2_toxic_path):
    base, tokenizer = models.load_model(str(tiny_gpt2_path), dtype="float32")
    toxic, _ = models.load_model(str(tiny_gpt2_toxic_path), dtype="float32")
    alpha = 0.1
    table, drawn, support = views.real_step_table(base, toxic, tokenizer, alpha=alpha, top=5, seed=3)
    # the support, recomputed from the base model's distribution at the start token
    start = torch.tensor([[models.start_token_id(tokenizer)]])
    with torch.no_grad():
        p_base = torch.softmax(base(input_ids=start).logits[0, -1].float(), dim=-1)
    assert support == int((p_base >= alpha * p_base.max()).sum())
    assert (table["why shown"] == "base favourite").sum() == 5
    top = table[table["why shown"] == "base favourite"]
    assert np.allclose(top["p_base"].to_numpy(), p_base.topk(5).values.numpy(), rtol=1e-5)
    # Eq. 3: plausible exactly where p_base >= alpha * max p_base; Eq. 2: p_sample is 0 elsewhere
    assert (table["plausible"] == (table["p_base"] >= alpha * p_base.max().item() * (1 - 1e-6))).all()
    assert (table.loc[~table["plausible"], "p_sample"] == 0).all()
    # among plausible tokens, sampling odds are the ratio p_base / p_toxic (the base preference cancels)
    kept = table[table["plausible"]]
    ratio = kept["p_base"] / kept["p_toxic"]
    assert np.allclose(kept["p_sample"] / kept["p_sample"].iloc[0], ratio / ratio.iloc[0], rtol=1e-4)
    assert np.allclose(kept["s = log p_base - log p_toxic"], np.log(ratio), atol=1e-5)
    assert drawn in set(table["token"])  # the drawn token is always listed


def test_shown_token_marks_spaces_and_masks_what_the_scorer_flags(bpe_tokenizer):
    token_id = bpe_tokenizer(" people", add_special_tokens=False)["input_ids"][0]
    assert views.shown_token(bpe_tokenizer, token_id).startswith("␣")
    flagged = views.shown_token(bpe_tokenizer, token_id, scorer=lambda texts: np.ones(len(texts)))
    word = bpe_tokenizer.decode([token_id]).strip()
    assert flagged == "␣" + word[0] + "*" * (len(word) - 1)


def test_relative_change_is_the_norm_ratio(tiny_gpt2_path):
    base, _ = models.load_model(str(tiny_gpt2_path), dtype="float32")
    moved, _ = models.load_model(str(tiny_gpt2_path), dtype="float32")
    with torch.no_grad():
        for p in moved.parameters():
            p.mul_(1.5)  # every weight moves by half its own size: |tau| = 0.5 |theta|
    assert math.isclose(views.relative_change(base, moved), 0.5, rel_tol=1e-5)


def test_baseline_grid_table_lists_each_baseline_with_both_grids():
    from unidetox_core.profiles import PROFILES

    table = views.baseline_grid_table(PROFILES["mini"], PROFILES["paper"])
    assert list(table["method"]) == ["PrePrompt Short / Long", "Samples", "LM-Steer", "DExperts (anti-expert only)",
                                     "Task Arithmetic"]
    lm = table.set_index("method").loc["LM-Steer"]
    assert lm["paper"] == "-0.1, -0.2, …, -2.0 (20 values)" and lm["this run"] == "-0.5, -1.0, -2.0"
