"""The methods the book compares, each under one name, with what it tunes and how it acts.

A registry in the manner of lm-evaluation-harness's task registry: a method is a ``Method`` record,
and the code that evaluates, tunes or tabulates methods reads these records instead of comparing
name strings. The name is the one used everywhere: in the results tables' ``method`` column, in the
evaluation specs (``experiments.variant``) and in the cache keys.

How a method acts (``acts_on``) decides how ``experiments.build_variant`` applies it to generation
and ``mmlu_keywords`` to MMLU scoring:

- ``"nothing"``: the model as it is (the base model);
- ``"prompt"``: a safety pre-prompt in front of every prompt (PrePrompt Short / Long);
- ``"weights"``: a fine-tuned checkpoint (UniDetox, Samples) or edited weights (Task Arithmetic);
- ``"lm_head"``: a steering matrix on the LM head's input (LM-Steer);
- ``"decoding"``: next-token scores combined with a toxic model's (DExperts).
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("nothing", "prompt", "weights", "lm_head", "decoding")


@dataclass(frozen=True)
class Method:
    """One method of the comparison (Section 3.2 and App. B.3 of the seed).

    ``hparam`` is what is tuned ("" for nothing) and ``grid`` the profile setting holding its values;
    ``tuned_on`` is ``"source"`` for a setting chosen once on the source model and reused on every
    model (UniDetox, Samples: Section 3.4), ``"each"`` for one chosen per model. ``text`` names the
    distilled text a fine-tuning method trains on; ``needs`` what each target model must have made
    for it (``"toxic_model"``, ``"steering_matrix"``); ``preprompt`` the key of its safety pre-prompt.
    """

    name: str
    label: str
    acts_on: str
    hparam: str = ""
    grid: str = ""
    tuned_on: str = ""
    text: str = ""
    needs: tuple[str, ...] = ()
    preprompt: str = ""

    @property
    def fine_tuned(self) -> bool:
        return bool(self.text)

    @property
    def per_model(self) -> bool:
        return self.tuned_on == "each"


BASE = Method("base", "Base model", "nothing")
PREPROMPT_SHORT = Method("preprompt_short", "PrePrompt Short", "prompt", preprompt="short")
PREPROMPT_LONG = Method("preprompt_long", "PrePrompt Long", "prompt", preprompt="long")
SAMPLES = Method("samples", "Samples", "weights", "steps", "detox_steps", "source", text="samples")
# LM-Steer's value is the *multiplier* of the profile's ``lmsteer_epsilon`` (Table 6 reports "-0.3 eps").
LMSTEER = Method("lmsteer", "LM-Steer", "lm_head", "epsilon_multiplier", "lmsteer_multipliers", "each",
                 needs=("steering_matrix",))
DEXPERTS = Method("dexperts", "DExperts", "decoding", "beta", "dexperts_betas", "each", needs=("toxic_model",))
TASK_ARITHMETIC = Method("task_arithmetic", "Task Arithmetic", "weights", "lambda", "task_arithmetic_lambdas", "each",
                         needs=("toxic_model",))
UNIDETOX = Method("unidetox", "UniDetox", "weights", "steps", "detox_steps", "source", text="unidetox")

# In the paper's row order (Tables 1 and 2).
REGISTRY: dict[str, Method] = {m.name: m for m in (BASE, PREPROMPT_SHORT, PREPROMPT_LONG, SAMPLES, LMSTEER,
                                                   DEXPERTS, TASK_ARITHMETIC, UNIDETOX)}


def get(name: str) -> Method:
    """The method called ``name``; an unknown name is an error that lists the known ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"method={name!r} is unknown; use one of {list(REGISTRY)}.") from None


def names(**where) -> list[str]:
    """Names of the registered methods whose attributes equal ``where`` (e.g. ``tuned_on="each"``),
    in the paper's row order."""
    return [m.name for m in REGISTRY.values() if all(getattr(m, k) == v for k, v in where.items())]


def label(name: str) -> str:
    """The row label of the paper's tables; a name outside the registry is its own label."""
    return REGISTRY[name].label if name in REGISTRY else name


def grids(profile: dict) -> dict[str, tuple[str, list]]:
    """``{method: (hparam, values)}`` of the methods tuned per model, values from ``profile``."""
    return {m.name: (m.hparam, list(profile[m.grid])) for m in REGISTRY.values() if m.per_model}
