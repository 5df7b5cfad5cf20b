"""How much of a padded batch is padding: random vs length-grouped batches vs packing.

Notebook 03 shows the table on the course data; notebook 04 explains why the course trains
padding-free (``DataCollatorWithFlattening``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

#: The batching notebook 04 trains with: padding-free packing (DataCollatorWithFlattening).
RECOMMENDED_BATCHING = "packing"


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """rows, mean and nearest-rank percentiles p50/p90/p99 and max of token lengths."""
    ordered = sorted(lengths)
    rank = lambda q: ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]  # noqa: E731
    return {"rows": len(ordered), "mean": sum(ordered) / len(ordered),
            "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


@dataclass(frozen=True)
class PaddingRow:
    """Tokens one epoch computes with one batching strategy."""

    strategy: str
    description: str
    computed: int
    real: int

    @property
    def padding(self) -> int:
        return self.computed - self.real

    @property
    def padding_share(self) -> float:
        return self.padding / self.computed


def _padded_tokens(order: Sequence[int], lengths: Sequence[int], batch_size: int) -> int:
    total = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        total += max(batch) * len(batch)
    return total


def random_order(n: int, seed: int = 0) -> list[int]:
    """A shuffled epoch order; seed 0 gives the shared README's 379,557 tokens per epoch for the
    original encoding (``bench.common.expected_padded_tokens``: the average over all orders is close)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def length_grouped_order(lengths: Sequence[int], group_size: int, seed: int = 0) -> list[int]:
    """The epoch order of transformers' own ``LengthGroupedSampler`` (``group_by_length``).

    The Trainer passes ``per_device_train_batch_size * gradient_accumulation_steps``
    as its batch size: rows are sorted by length inside random mega-batches of 50 of those.
    """
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    generator = torch.Generator().manual_seed(seed)
    return list(LengthGroupedSampler(group_size, lengths=list(lengths), generator=generator))


def padding_table(
    lengths: Sequence[int], batch_size: int = 4, seed: int = 0, gradient_accumulation_steps: int = 1
) -> list[PaddingRow]:
    """Tokens computed per epoch: random batches, length-grouped batches, padding-free packing."""
    real = sum(lengths)
    grouped = length_grouped_order(lengths, batch_size * gradient_accumulation_steps, seed)
    return [
        PaddingRow("random", f"随机批次，每批 {batch_size} 条，补齐到最长",
                   _padded_tokens(random_order(len(lengths), seed), lengths, batch_size), real),
        PaddingRow("group_by_length", "按长度分组（LengthGroupedSampler）",
                   _padded_tokens(grouped, lengths, batch_size), real),
        # DataCollatorWithFlattening concatenates a batch into one row: no padding at all.
        PaddingRow("packing", "无填充打包（DataCollatorWithFlattening）", real, real),
    ]


def format_padding_table(rows: list[PaddingRow]) -> str:
    """The padding table as text, the recommended batching marked."""
    head = ("组批方式", "计算的 token", "真实 token", "填充", "占比")
    body = [(r.description, f"{r.computed:,}", f"{r.real:,}", f"{r.padding:,}", f"{r.padding_share:.1%}")
            for r in rows]
    widths = [max(display_width(row[i]) for row in (head, *body)) for i in range(len(head))]
    lines = []
    for row, r in zip((head, *body), (None, *rows), strict=True):
        cells = [pad_text(row[0], widths[0])] + [pad_text(c, w, right=True) for c, w in zip(row[1:], widths[1:], strict=True)]
        mark = "  ← 推荐" if r is not None and r.strategy == RECOMMENDED_BATCHING else ""
        lines.append("  ".join(cells) + mark)
    return "\n".join(lines)


def display_width(text: str) -> int:
    """Columns a text takes in a monospace terminal (CJK characters take two)."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def pad_text(text: str, width: int, right: bool = False) -> str:
    fill = " " * (width - display_width(text))
    return fill + text if right else text + fill
