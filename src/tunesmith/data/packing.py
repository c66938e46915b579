"""Padding-free packing: samples laid end to end in one row, position ids restarting per sample.

With SDPA attention, `attention_mask=None`, `use_cache=False` and restarting `position_ids`,
transformers builds a block-diagonal causal mask, so no sample attends to another and no FLOP is
spent on padding. Targets are shifted inside each sample before packing, so the last token of one
sample is never asked to predict the first token of the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .chat import IGNORE, TokenizedExample, TokenizedPair

# Tokens per packed row (one forward pass): activation memory grows with it. One default for
# training, loss evaluation and gradient scoring, so the same samples are packed the same way.
MAX_TOKENS_PER_ROW = 1024


@dataclass
class PackedRow:
    """One forward pass worth of tokens.

    input_ids, position_ids, targets: LongTensor [1, L] with L = sum of the packed sample lengths.
    targets[t] is the token to predict after position t (-100 where not trained).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    n_samples: int

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def shift_labels(labels: list[int]) -> list[int]:
    """Per-sample next-token targets: position t predicts labels[t + 1]; the last predicts nothing."""
    return labels[1:] + [IGNORE]


def make_row(samples: list[TokenizedExample]) -> PackedRow:
    """Concatenate samples into one padding-free row."""
    ids: list[int] = []
    pos: list[int] = []
    tgt: list[int] = []
    for s in samples:
        ids.extend(s.input_ids)
        pos.extend(range(len(s.input_ids)))
        tgt.extend(shift_labels(s.labels))
    as_row = lambda xs: torch.tensor(xs, dtype=torch.long).unsqueeze(0)  # noqa: E731  [1, L]
    return PackedRow(as_row(ids), as_row(pos), as_row(tgt), len(samples))


def pack_rows(samples: list[TokenizedExample], max_tokens: int) -> list[PackedRow]:
    """Greedily pack samples, in order, into rows of at most `max_tokens` tokens.

    Order is kept (first fit in sequence, not sorted) so that the data order, and with it exact
    resume, depends only on the sampler. A sample longer than `max_tokens` gets a row of its own.
    """
    rows: list[PackedRow] = []
    current: list[TokenizedExample] = []
    used = 0
    for s in samples:
        n = len(s.input_ids)
        if current and used + n > max_tokens:
            rows.append(make_row(current))
            current, used = [], 0
        current.append(s)
        used += n
    if current:
        rows.append(make_row(current))
    return rows


def pack_pairs(pairs: list[TokenizedPair], max_tokens: int) -> list[PackedRow]:
    """Pack preference pairs, in order, into rows of whole pairs: chosen_1, rejected_1, chosen_2, ...

    A pair never spans two rows, so a row's loss depends on that row alone (one backward per row,
    exact under any split into micro-batches). A pair longer than `max_tokens` gets a row of its
    own. A row holds `n_samples // 2` pairs, in the order given.
    """
    rows: list[PackedRow] = []
    current: list[TokenizedExample] = []
    used = 0
    for p in pairs:
        n = p.n_tokens
        if current and used + n > max_tokens:
            rows.append(make_row(current))
            current, used = [], 0
        current.extend((p.chosen, p.rejected))
        used += n
    if current:
        rows.append(make_row(current))
    return rows
