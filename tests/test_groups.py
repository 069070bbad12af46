"""Group mentions and the check of the paper's in/out-of-distribution split, by hand."""

import pandas as pd
import pytest

from unidetox_core import groups


def test_mentions_are_whole_words():
    assert groups.groups_mentioned("Those Muslims and the Jews' rabbi") == {"muslim", "jewish"}
    assert groups.mentions("a wheelchair ramp", "physical_disability")
    assert not groups.mentions("blackberry pie", "black")  # a whole word, not a prefix
    with pytest.raises(ValueError, match="not one of the ToxiGen groups"):
        groups.mentions("x", "martians")


def test_category_rates_and_the_split_check():
    texts = ["gay pride", "women rights", "the mosque", "china and mexico", "a wheelchair", "nothing", "more", "text",
             "lesbian", "muslim"]
    rates = groups.category_rates(texts).set_index("category")
    assert rates.loc["gender_lgbtq", "texts naming it"] == 3 and rates.loc["religion", "texts naming it"] == 2
    assert rates.loc["race_nationalities", "per 1,000 texts"] == pytest.approx(100.0)  # one text of ten
    meaningful, sentence = groups.ood_split_check(rates.reset_index(), ["disability"])
    assert not meaningful and "not meaningful here" in sentence  # disability named as often as race
    rare = pd.DataFrame({"category": ["a", "b", "ood"], "per 1,000 texts": [50.0, 20.0, 1.0]})
    meaningful, sentence = groups.ood_split_check(rare, ["ood"])
    assert meaningful and sentence.startswith("The toxic corpus names the out-of-distribution category 1.0 times")
