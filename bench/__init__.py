"""Performance benchmark: oppflow against a bare Temporal baseline (python -m bench)."""
