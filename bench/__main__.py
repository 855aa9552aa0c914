"""``python -m bench [--quick]`` (bench.run); ``python -m bench quality`` (bench.quality)."""

from __future__ import annotations

import sys

if sys.argv[1:2] == ["quality"]:
    from bench.quality import main as quality

    sys.exit(quality(sys.argv[2:]))

from bench.run import main

sys.exit(main())
