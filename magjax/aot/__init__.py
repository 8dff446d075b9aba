"""Ahead-of-time compilation for TPU slices, on any machine with libtpu installed.

``topology`` names a slice (``v5p-64``, ``v5p:2x4x4``) and gives its devices; ``recipe``
reads an experiment's configuration without loading data or weights; ``abstract`` builds
the shapes and shardings of the experiment's functions' arguments; ``compile`` lowers and
compiles those functions for the slice and reads XLA's per-chip memory analysis;
``report`` judges the fit (per role and colocated) and writes text or JSON; ``command`` is
``magjax plan``.
"""
