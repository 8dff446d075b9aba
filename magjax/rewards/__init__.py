"""The verifiers: format, math (parsers + SymPy), code (sandboxed runs against tests),
length and language rewards, combined by reward.py and run in parallel by pool.py."""
