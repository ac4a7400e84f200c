"""Serialized inference functions (jax.export / StableHLO) that run without the training code."""
