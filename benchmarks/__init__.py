"""``python -m benchmarks``: the repository's entry point to ``jaxconv bench``; results live in
``benchmarks/results/<device>/`` (the latest full report per device kind, committed)."""
