"""Which identity group a text mentions: small hand-made term lists for the ToxiGen groups.

The paper splits its evaluation into in-distribution categories (those its toxic data covers) and an
out-of-distribution one (disability, which it assumes the toxic data lacks). Whether that split
means anything in another world depends on what the toxic corpus actually talks about, so the book
counts it (``category_rates``) rather than assuming it. The term lists are deliberately short and
literal -- group names, their plurals and the common slurs a toxic tweet uses for them -- matched as
whole words (``analysis.words``). They under-count (no paraphrase, no implicit reference) and a few
terms are ambiguous (*black*, *native*); they measure *how often a group is named*, nothing finer.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd

from .analysis import words
from .data import CATEGORY_OF_GROUP, OOD_CATEGORIES

OOD = OOD_CATEGORIES  # the paper's out-of-distribution category (disability)

GROUP_TERMS: dict[str, frozenset[str]] = {group: frozenset(terms.split()) for group, terms in {
    "women": "women woman girl girls female females wife wives lady ladies mother mothers feminist feminists "
             "bitch bitches hoe hoes whore whores slut sluts",
    "lgbtq": "gay gays lesbian lesbians lgbt lgbtq queer queers homosexual homosexuals fag fags faggot faggots "
             "dyke dykes homo homos",
    "bisexual": "bisexual bisexuals bisexuality",
    "trans": "trans transgender transgenders transsexual tranny trannies",
    "black": "black blacks african africans nigga niggas nigger niggers negro negroes",
    "asian": "asian asians oriental orientals",
    "latino": "latino latinos latina latinas hispanic hispanics beaner beaners",
    "chinese": "chinese china chink chinks",
    "mexican": "mexican mexicans mexico wetback wetbacks",
    "middle_east": "arab arabs arabic iranian iranians iraqi iraqis syrian syrians afghan afghans",
    "native_american": "native natives indian indians tribe tribes redskin redskins",
    "immigrant": "immigrant immigrants immigration migrant migrants refugee refugees illegals",
    "jewish": "jew jews jewish judaism rabbi kike kikes zionist zionists",
    "muslim": "muslim muslims moslem islam islamic mosque quran koran sharia jihad",
    "mental_disability": "retard retards retarded autistic autism schizo schizophrenic psycho lunatic "
                         "mentally disabled",
    "physical_disability": "disability disabilities wheelchair cripple cripples crippled deaf amputee "
                           "paralyzed handicapped",
}.items()}


def groups_mentioned(text: str) -> set[str]:
    """The groups of ``GROUP_TERMS`` whose terms occur in ``text`` as whole words."""
    present = set(words(text))
    return {group for group, terms in GROUP_TERMS.items() if present & terms}


def mentions(text: str, group: str) -> bool:
    """Whether ``text`` names ``group`` (one of ``GROUP_TERMS``)."""
    if group not in GROUP_TERMS:
        raise ValueError(f"group={group!r} is not one of the ToxiGen groups {sorted(GROUP_TERMS)}.")
    return bool(set(words(text)) & GROUP_TERMS[group])


def category_rates(texts: Iterable[str], categories: Sequence[str] | None = None) -> pd.DataFrame:
    """Per ToxiGen category (``data.CATEGORY_OF_GROUP``): how many of ``texts`` name one of its groups,
    and that count per 1,000 texts. Columns ``category``, ``texts naming it``, ``per 1,000 texts``."""
    texts = list(texts)
    named = [groups_mentioned(t) for t in texts]
    categories = list(categories or dict.fromkeys(CATEGORY_OF_GROUP.values()))
    rows = []
    for category in categories:
        groups = {g for g, c in CATEGORY_OF_GROUP.items() if c == category}
        count = sum(1 for found in named if found & groups)
        rows.append({"category": category, "texts naming it": count,
                     "per 1,000 texts": 1000 * count / len(texts) if texts else float("nan")})
    return pd.DataFrame(rows)


def ood_split_check(rates: pd.DataFrame, ood: Sequence[str], ratio: float = 0.1) -> tuple[bool, str]:
    """Whether the paper's in/out-of-distribution split means something for a toxic corpus with these
    ``category_rates``: the out-of-distribution categories must be named at most ``ratio`` times as
    often as the least-named in-distribution one. Returns ``(meaningful, sentence)``."""
    rates = rates.set_index("category")["per 1,000 texts"]
    ood_rate = float(rates[list(ood)].max())
    id_rates = rates.drop(index=list(ood))
    least = float(id_rates.min())
    meaningful = ood_rate <= ratio * least
    sentence = (f"The toxic corpus names the out-of-distribution category {ood_rate:.1f} times per 1,000 texts, the "
                f"in-distribution ones {', '.join(f'{c} {v:.1f}' for c, v in id_rates.items())}. ")
    sentence += ("So the split is meaningful here: the toxic model has seen little about the out-of-distribution groups."
                 if meaningful else
                 f"That is more than {ratio:.0%} of the least-named in-distribution category, so the split is **not "
                 "meaningful here**: TP OOD is one more category the toxic data covers, not a test of transfer to "
                 "unseen groups.")
    return meaningful, sentence
