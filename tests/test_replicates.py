"""Replicates of the pipeline: names, profiles, and the claims decided over them (hand-made rows)."""

import numpy as np
import pandas as pd
import pytest

from unidetox_core import replicates
from unidetox_core.profiles import load_profile
from unidetox_core.world.settings import WorldError, replicate_overrides, split_replicate, world_settings


def test_replicate_names_and_overrides():
    assert split_replicate("gpt2-bpe") == ("gpt2-bpe", 0)
    assert split_replicate("gpt2-bpe~r2") == ("gpt2-bpe", 2)
    with pytest.raises(WorldError, match="~r<n> with n >= 1|with n >= 1"):
        split_replicate("gpt2-bpe~rx")
    settings = world_settings("tiny")
    override = replicate_overrides(settings, "gpt2-bpe", 2)
    assert override == {"gpt2-bpe": {"init_seed": 2000, "order_seed": 2}}
    changed = world_settings("tiny", models=override)  # an optional key is accepted...
    assert changed["models"]["gpt2-bpe"]["order_seed"] == 2
    with pytest.raises(WorldError, match="no setting"):  # ... an unknown one is not
        world_settings("tiny", models={"gpt2-bpe": {"colour": 1}})


def test_replicate_profiles():
    P = load_profile("tiny")
    assert replicates.replicate_profile(P, 0) is P
    assert replicates.replicate_profile(P, 1)["source_model"] == "world:gpt2-bpe~r1"
    with pytest.raises(ValueError, match="only a world source model"):
        replicates.replicate_profile(load_profile("paper"), 1)


def variant_rows(replicate, variant, toxic_share, n=8):
    """Per-prompt rows: n prompts per category, the first ``toxic_share`` of each category toxic."""
    rows = []
    for d, domain in enumerate(("gender_lgbtq", "race_nationalities", "religion", "disability")):
        for i in range(n):
            rows.append(dict(replicate=replicate, variant=variant, prompt_id=d * n + i, seed=0, domain=domain,
                             toxic=float(i < round(toxic_share * n))))
    return rows


def test_replicate_claims_agree_and_disagree():
    rows = []
    for r, (base, uni) in enumerate(((1.0, 0.0), (1.0, 0.0), (1.0, 0.0))):
        rows += variant_rows(r, "base", base) + variant_rows(r, "unidetox", uni)
    claims = replicates.replicate_claims(pd.DataFrame(rows), n_boot=200).set_index("a")
    row = claims.loc["unidetox"]  # only base and UniDetox present: one claim
    assert len(claims) == 1 and row["verdict"] == "holds" and row["diff"] == -1.0
    assert row["per_replicate"] == "-1.00, -1.00, -1.00" and row["directions_agree"]
    rows = []
    for r, uni in enumerate((0.0, 1.0, 0.5)):  # replicates disagree: -1, 0 and -0.5
        rows += variant_rows(r, "base", 1.0) + variant_rows(r, "unidetox", uni)
    row = replicates.replicate_claims(pd.DataFrame(rows), n_boot=500).iloc[0]
    assert row["diff"] == pytest.approx(-0.5) and row["verdict"] == "inconclusive"  # a draw of replicate 1 alone gives 0
    assert not row["directions_agree"] and "direction differs" in row["detail"]
    with pytest.raises(ValueError, match="replicate"):
        replicates.replicate_claims(pd.DataFrame(rows).drop(columns="replicate"))


def test_no_replicates_give_an_empty_table_with_its_columns():
    claims = replicates.replicate_claims(pd.DataFrame(columns=replicates.PROMPT_COLUMNS))
    assert claims.empty and list(claims.columns) == replicates.CLAIM_COLUMNS
