"""The spectrax benchmark suite: `python -m benchmarks [--quick] [--out DIR]` (see __main__.py)."""

__all__ = []
