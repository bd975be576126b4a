"""The MIL-NCE text tower with its tokeniser inside the graph (reference §2, §3).

Tokenising with TF string ops keeps the saved module self-contained: a serving binary can embed raw
sentences with no Python. It follows the PyTorch port's tokeniser: lower-case, words = runs of letters,
digits, '_' and apostrophes, unknown words dropped, the first `max_words` known words, right-padded with 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from s3d_retrieval.model.config import Config
from s3d_retrieval.model.layers import Dense, variable

# Everything that is not part of a word (Python's [\w'] written with RE2's Unicode classes).
NON_WORD = r"[^\pL\pN_']+"


def vocabulary_table(words: Sequence[str] | None = None, path: str | None = None) -> tf.lookup.StaticHashTable:
    """word -> int32 id (1-based; 0 = unknown/padding), from an in-graph constant or a `word<TAB>id` file."""
    if path is not None:
        init = tf.lookup.TextFileInitializer(path, tf.string, 0, tf.int32, 1, delimiter="\t")
    else:
        if words is None:
            raise ValueError("vocabulary_table needs words or a path")
        init = tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(words), tf.string), tf.range(1, len(words) + 1, dtype=tf.int32))
    return tf.lookup.StaticHashTable(init, default_value=0)


class TextTower(tf.Module):
    """Sentences [B] (string) -> {"text_embedding": [B,512]}."""

    def __init__(self, config: Config, table: tf.lookup.StaticHashTable, scope: str = "text"):
        super().__init__(name=None)
        self.max_words = config.max_words
        self.table = table
        self.embedding = variable(f"{scope}/word_embedding", [config.vocab_size, config.word_dim])
        self.fc1 = Dense(f"{scope}/fc1", config.word_dim, config.text_hidden)
        self.fc2 = Dense(f"{scope}/fc2", config.text_hidden, config.embed_dim)

    def tokenize(self, sentences: tf.Tensor) -> tf.Tensor:
        """[B] strings -> [B, max_words] int32 ids."""
        cleaned = tf.strings.regex_replace(tf.strings.lower(sentences, encoding="utf-8"), NON_WORD, " ")
        ids = self.table.lookup(tf.strings.split(cleaned))
        known = tf.ragged.boolean_mask(ids, ids > 0)
        return known.to_tensor(default_value=0, shape=[None, self.max_words])

    def __call__(self, sentences: tf.Tensor) -> dict[str, tf.Tensor]:
        words = tf.nn.embedding_lookup(self.embedding, tf.reshape(self.tokenize(sentences), [-1]))
        hidden = tf.nn.relu(self.fc1(words))  # [B * max_words, hidden]
        hidden = tf.reshape(hidden, [-1, self.max_words, hidden.shape[-1]])
        return {"text_embedding": self.fc2(tf.reduce_max(hidden, axis=1))}
