"""The spread scenario on its own (`make bench` runs it as a section of `python -m tools.bench`)."""

from __future__ import annotations

from tools.bench.spread import main

if __name__ == "__main__":
    raise SystemExit(main())
