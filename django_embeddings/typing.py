"""Type aliases shared across the package."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
"""One embedding: a 1-D float32 array."""

Matrix = npt.NDArray[np.float32]
"""Several embeddings, one per row: a 2-D float32 array."""

InputType = Literal["document", "query"]
"""What a text is embedded as; asymmetric models embed queries differently."""

DeconstructResult = tuple[str, str, Sequence[Any], dict[str, Any]]
