"""Summary statistics with one definition, shared by ``esrag eval``, the API's timings and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (q in 0..100) by linear interpolation between the closest ranks (numpy's
    default, the same as Excel's PERCENTILE.INC); NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else math.nan
