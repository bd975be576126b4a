"""The stand-in module's vocabulary: real English words first, then synthetic fillers.

The real vocabulary (66,249 words, `s3d_dict.npy` in the PyTorch port) cannot be downloaded here; the
stand-in needs one of the same size whose first words make demo queries meaningful.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

COMMON_WORDS = """
a about above across after again against all along an and animal animals any are arm around at away baby
back ball bank bar be beach bed behind bicycle big bike bird black blue board boat body book bottle bowl box
boy bread bridge brown building bus but by cake camera car cat chair chicken child children city climbing
clouds coffee cooking cut cutting dance dancing dark day dish do dog doing down drawing drift drifting
drink drinking driving drum drums eating egg eggs face falling field fire fish fishing floor flower food
football for forest from fruit game garden girl glass going grass green ground guitar hair hand hands he
her him his holding horse house how ice in inside into is it its jumping kitchen knife lake large left
light little making man men mixing mountain music near next night of off on onion open orange out outside
over paint painting pan paper park people person piano pizza plate play player playing pot pouring red
riding right river road rock room running salt sand sea she shoe singing sitting skateboard skiing slicing
small snow soccer someone something song sport standing street sun surfing swimming table taking talking
the their them there they this through to top towards train tree trees two under up using vegetables
video walking wall washing water waterfall wave waves we white window with woman women wood working
yellow you young
""".split()


def standin_vocabulary(size: int) -> list[str]:
    """`size - 1` distinct words (row 0 of the embedding is padding, so ids run 1..size-1)."""
    words = COMMON_WORDS[: size - 1]
    words += [f"word{i:05d}" for i in range(len(words), size - 1)]
    return words


def words(text: str) -> list[str]:
    """The tokeniser's words of a sentence (lower-case runs of letters, digits, '_' and "'"), as the graph has them."""
    return re.findall(r"[\w']+", text.lower())


def build_vocabulary(sentences: Iterable[str], limit: int | None = None) -> list[str]:
    """Words of `sentences`, most frequent first (ties alphabetical), at most `limit` of them."""
    counts = Counter(w for s in sentences for w in words(s))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:limit]
