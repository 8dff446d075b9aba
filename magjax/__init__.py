"""magjax: reinforcement learning for reasoning language models, natively in JAX.

Importing magjax touches no device and changes no JAX configuration; see DESIGN.md.
"""

__version__ = "0.1.0"
