"""dataseg-jax: DaTaSeg (Gu et al., NeurIPS 2023) in JAX."""
