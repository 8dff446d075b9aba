"""``magjax bench``: throughput measured against this machine's own limits, in one run."""
