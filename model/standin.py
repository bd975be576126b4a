"""A faithful stand-in for the TF Hub module: same format, signatures and ops, seeded random weights."""
from __future__ import annotations

import os
from pathlib import Path

from s3d_retrieval.model.config import SIZES
from s3d_retrieval.model.hub_format import write_module
from s3d_retrieval.model.network import Network
from s3d_retrieval.model.text import vocabulary_table
from s3d_retrieval.model.vocab import standin_vocabulary
from s3d_retrieval.model.weights import standin_weights


def write_standin(out: str | os.PathLike, size: str = "tiny", seed: int = 0, vocab_layout: str = "asset",
                  variables: str = "resource") -> Path:
    """Build the network eagerly, give it seeded weights, and write it as a hub-format module."""
    config = SIZES[size]
    vocabulary = standin_vocabulary(config.vocab_size)
    net = Network(config, vocabulary_table(words=vocabulary))
    weights = standin_weights(net, seed)
    return write_module(out, config, weights, vocabulary, vocab_layout=vocab_layout, variables=variables)
