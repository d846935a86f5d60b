"""A small generated IMDB look-alike, for tests on machines without ../shared/imdb and for defective copies."""

from __future__ import annotations

import numpy as np
import pandas as pd

POSITIVE = "great wonderful superb moving brilliant loved enjoyable touching masterpiece fun".split()
NEGATIVE = "awful boring terrible waste dull hated poor stupid mess worst".split()
NEUTRAL = "movie film plot actor scene story director character ending script time".split()


def make_reviews(n: int, seed: int) -> pd.DataFrame:
    """Reviews whose label is carried by sentiment words among neutral ones, ordered neg then pos like IMDB."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    texts = []
    for label in labels:
        words = list(rng.choice(NEUTRAL, 20)) + list(rng.choice(POSITIVE if label else NEGATIVE, 4))
        words += list(rng.choice(NEGATIVE if label else POSITIVE, 1))
        rng.shuffle(words)
        texts.append(" ".join(words) + ".<br /><br />The end")
    return pd.DataFrame({"text": texts, "label": labels})
