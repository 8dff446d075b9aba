"""Native CPU kernels for the shapes XLA:CPU's libraries serve poorly, built on first use."""
