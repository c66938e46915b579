"""IFEval-style prompts generated offline, scored with the IFEval checkers of `if-verifiable`.

The IFEval prompts themselves live on the Hugging Face hub (google/IFEval) and cannot be fetched
here, so `ifeval_items` builds prompts of the same kind: a short base request ("Describe public
libraries.") followed by one to three verifiable instructions drawn from the IFEval registry, each
with valid kwargs and phrased by the checker's own `build_description`. Instructions that the
registry's conflict table rules out together are never combined. The same (n, seed) always gives
the same items, in the same format as IFBench items (key, prompt, instruction_id_list, kwargs).

The items are scored by `tunesmith.evaluate.ifeval.score_ifeval` (reference IFEval rules, see
`ifcheck`).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from ..errors import UserError
from .ifcheck import ifeval_registry, seeded_random

_RELATIONS = ("less than", "at least")
_KEYWORDS = ("river", "lantern", "harmony", "journey", "window", "garden", "signal", "puzzle", "echo", "compass")
_FORBIDDEN = ("very", "really", "thing", "stuff", "nice", "basically", "actually", "literally")
_TEMPLATES = (
    "Write a short note about {t}.", "Describe {t}.", "Explain {t} to a curious teenager.",
    "Write a short story about {t}.", "Give some advice on {t}.", "Write a blog post about {t}.",
    "Write a letter to a friend about {t}.", "List the pros and cons of {t}.",
    "Write a product description for {t}.", "Summarize what people should know about {t}.",
)
TOPICS = (  # the eval items' topics
    "a rainy day in the city", "learning to play the guitar", "the life cycle of a butterfly",
    "a new smartphone", "public libraries", "remote work", "a trip to the mountains", "composting at home",
    "the first day at a new school", "electric bicycles", "a small coffee shop", "the moon landing",
    "saving money", "a lost umbrella", "urban gardening", "a robot that learns to paint",
)

# instruction id -> kwargs sampler; every value is within what the checker accepts.
KWARGS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "change_case:capital_word_frequency": lambda r: {"capital_frequency": r.randint(2, 5),
                                                     "capital_relation": r.choice(_RELATIONS)},
    "change_case:english_capital": lambda r: {},
    "change_case:english_lowercase": lambda r: {},
    "detectable_content:number_placeholders": lambda r: {"num_placeholders": r.randint(1, 3)},
    "detectable_content:postscript": lambda r: {"postscript_marker": r.choice(("P.S.", "P.P.S"))},
    "detectable_format:json_format": lambda r: {},
    "detectable_format:multiple_sections": lambda r: {"section_spliter": r.choice(("Section", "SECTION")),
                                                      "num_sections": r.randint(2, 4)},
    "detectable_format:number_bullet_lists": lambda r: {"num_bullets": r.randint(2, 5)},
    "detectable_format:number_highlighted_sections": lambda r: {"num_highlights": r.randint(1, 3)},
    "detectable_format:title": lambda r: {},
    "keywords:existence": lambda r: {"keywords": r.sample(_KEYWORDS, 2)},
    "keywords:forbidden_words": lambda r: {"forbidden_words": r.sample(_FORBIDDEN, 2)},
    "keywords:frequency": lambda r: {"keyword": r.choice(_KEYWORDS), "frequency": r.randint(2, 4),
                                     "relation": r.choice(_RELATIONS)},
    "keywords:letter_frequency": lambda r: {"letter": r.choice("aeinorst"), "let_frequency": r.randint(3, 8),
                                            "let_relation": r.choice(_RELATIONS)},
    "length_constraints:number_paragraphs": lambda r: {"num_paragraphs": r.randint(2, 4)},
    "length_constraints:number_sentences": lambda r: {"num_sentences": r.randint(2, 8),
                                                      "relation": r.choice(_RELATIONS)},
    "length_constraints:number_words": lambda r: {"num_words": r.choice((30, 50, 80, 120, 200)),
                                                  "relation": r.choice(_RELATIONS)},
    "punctuation:no_comma": lambda r: {},
    "startend:end_checker": lambda r: {"end_phrase": r.choice(("Any other questions?",
                                                              "Is there anything else I can help with?"))},
    "startend:quotation": lambda r: {},
}
SUPPORTED = tuple(sorted(KWARGS))


def _conflicts() -> dict[str, set[str]]:
    """The registry's conflict table made symmetric (A conflicts with B => B with A), as IFEval does."""
    from if_verifiable.ifeval import instructions_registry as reg  # loaded by ifeval_registry()

    table = {k: set(v) | {k} for k, v in reg.INSTRUCTION_CONFLICTS.items()}
    for key, others in list(table.items()):
        for other in others:
            table.setdefault(other, {other}).add(key)
    return table


def _describe(registry, instruction_id: str, kwargs: dict[str, Any], seed: str) -> str:
    checker = registry[instruction_id](instruction_id)
    with seeded_random(seed):  # all kwargs are given; seeded anyway so nothing can vary
        return checker.build_description(**kwargs)


def ifeval_items(n: int, seed: int | str = 0, instruction_ids: Sequence[str] | None = None,
                 max_instructions: int = 3, *, topics: Sequence[str] = TOPICS) -> list[dict[str, Any]]:
    """`n` IFEval-style items (key, prompt, instruction_id_list, kwargs), deterministic in `seed`.

    `instruction_ids` restricts the pool (default: every id in `SUPPORTED`); each item gets 1 to
    `max_instructions` mutually compatible instructions. `topics` are what the base requests are
    about (default: the eval items' own `TOPICS`; synthetic training prompts pass a disjoint list,
    so that no training prompt can equal an eval item).
    """
    if n < 0:
        raise UserError(f"n must be >= 0, got {n}")
    if max_instructions < 1:
        raise UserError(f"max_instructions must be >= 1, got {max_instructions}")
    pool = sorted(set(instruction_ids)) if instruction_ids is not None else list(SUPPORTED)
    unknown = [i for i in pool if i not in KWARGS]
    if unknown or not pool:
        raise UserError(f"unsupported IFEval instruction id(s) {unknown or pool}; choose from {list(SUPPORTED)}")
    registry = ifeval_registry()
    conflicts = _conflicts()
    rng = random.Random(seed)
    items = []
    for i in range(n):
        base = rng.choice(_TEMPLATES).format(t=rng.choice(topics))
        want = rng.randint(1, min(max_instructions, len(pool)))
        chosen: list[str] = []
        candidates = list(pool)
        while candidates and len(chosen) < want:
            pick = rng.choice(candidates)
            chosen.append(pick)
            candidates = [c for c in candidates if c not in conflicts.get(pick, {pick}) and pick not in
                          conflicts.get(c, {c})]
        kwargs = [KWARGS[iid](rng) for iid in chosen]
        key = f"ifeval-{seed}-{i}"
        texts = [_describe(registry, iid, kw, f"{key}|{j}") for j, (iid, kw) in enumerate(zip(chosen, kwargs))]
        items.append({"key": key, "prompt": " ".join([base, *texts]), "instruction_id_list": chosen,
                      "kwargs": kwargs})
    return items


GUARD_SEED = "guard"  # no integer eval seed and no synthetic-prompt stream ("synth:<seed>") draws this one


def guard_items(n: int) -> list[dict[str, Any]]:
    """The general-ability guard's fixed items (evaluate.guard): `n` IFEval-style items about the eval topics,
    from their own random stream, the same on every run."""
    return ifeval_items(n, seed=GUARD_SEED)
