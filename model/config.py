"""Sizes of the S3D MIL-NCE network (reference §3), full and small variants.

The full configuration reproduces the released model exactly; the small ones scale channel widths and the
vocabulary down so tests and demos run fast while keeping the same layers, ops and signature contract.
"""
from __future__ import annotations

from dataclasses import dataclass

# Inception blocks of S3D-G: (name, b0, b1a, b1b, b2a, b2b, b3b), in forward order.
INCEPTION_BLOCKS: tuple[tuple[str, int, int, int, int, int, int], ...] = (
    ("mixed_3b", 64, 96, 128, 16, 32, 32),
    ("mixed_3c", 128, 128, 192, 32, 96, 64),
    ("mixed_4b", 192, 96, 208, 16, 48, 64),
    ("mixed_4c", 160, 112, 224, 24, 64, 64),
    ("mixed_4d", 128, 128, 256, 24, 64, 64),
    ("mixed_4e", 112, 144, 288, 32, 64, 64),
    ("mixed_4f", 256, 160, 320, 32, 128, 128),
    ("mixed_5b", 256, 160, 320, 32, 128, 128),
    ("mixed_5c", 384, 192, 384, 48, 128, 128),
)

# Layouts a TF1 hub module may have (reference §1): vocabulary as an asset file or a graph constant,
# resource or legacy reference variables.
VOCAB_LAYOUTS = ("asset", "graph")
VARIABLE_KINDS = ("resource", "reference")

# Max pools placed before these blocks: (kernel, strides) in (T, H, W).
POOL_BEFORE: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "mixed_4b": ((3, 3, 3), (2, 2, 2)),
    "mixed_5b": ((2, 2, 2), (2, 2, 2)),
}


@dataclass(frozen=True)
class Config:
    """Architecture hyper-parameters; `width` multiplies every video-tower channel count."""

    width: float = 1.0
    vocab_size: int = 66_250  # embedding rows; row 0 is the padding id
    word_dim: int = 300
    text_hidden: int = 2048
    embed_dim: int = 512  # the joint space: kept at 512 in every size
    max_words: int = 16
    bn_epsilon: float = 1e-5

    def channels(self, n: int) -> int:
        """A channel count of the full network scaled to this size."""
        return max(2, round(n * self.width))


SIZES: dict[str, Config] = {
    "full": Config(),
    "tiny": Config(width=0.125, vocab_size=2_000, word_dim=32, text_hidden=128),
}
