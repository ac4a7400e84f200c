"""Text-embedding classifier: the only dataset-specific part of DaTaSeg [paper].

logit(q, c) = cos(W e_q, t_c) / tau for the frozen text embedding t_c of class c, and cos(W e_q, t_bg) / tau
for ONE learnable background embedding shared by every dataset [paper]; tau is learned (log-parametrised,
initialised to `temperature`, 0.01 [default]); the background vector is L2-normalised like the others
[default]. Classes outside the example's dataset get the finite logit -1e9 (probability exactly 0).

`inference_temperature` > 0 replaces tau outside training [not in paper]: the ranking of classes is unchanged,
their probabilities sharper or softer. A model trained at a high temperature (whose queries must align
closely with their class's text to reach a confident softmax, which is what carries over to names it never
saw, see docs/results.md) then meets the probability thresholds of panoptic and instance inference.

`learned=True` is the ablation of docs/results.md: the class table is a learned parameter [C, D] (one row
per union class, initialised at random) instead of the text embeddings, whose values are then unused.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from dataseg_jax.models.layers import dense

MASKED_LOGIT = -1e9


def l2_normalize(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class TextClassifier(nn.Module):
  """(queries [..., B, Q, D_q], class_embeddings [C, D], class_mask [B, C]) -> logits [..., B, Q, C + 1] float32."""
  embed_dim: int
  temperature: float = 0.01
  learned: bool = False
  dtype: jnp.dtype = jnp.float32
  inference_temperature: float = 0.0

  @nn.compact
  def __call__(self, queries, class_embeddings, class_mask, train: bool = False):
    if class_embeddings.ndim != 2 or class_embeddings.shape[-1] != self.embed_dim:
      raise ValueError(f"class_embeddings have shape {class_embeddings.shape} but config.model.embed_dim="
                       f"{self.embed_dim}; embed the vocabulary with the encoder the config names or set "
                       f"model.embed_dim to the embedding width")
    background = self.param("background", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab_embed",)),
                            (self.embed_dim,))
    log_tau = self.param("log_temperature", nn.initializers.constant(np.log(self.temperature)), ())
    q = l2_normalize(dense(self.embed_dim, ("embed", "vocab_embed"), self.dtype, name="proj")(queries)
                     .astype(jnp.float32))
    if self.learned:
      class_embeddings = self.param("class_table", nn.with_logical_partitioning(
          nn.initializers.normal(1.0), ("classes", "vocab_embed")), class_embeddings.shape)
    table = l2_normalize(jnp.concatenate([class_embeddings.astype(jnp.float32), background[None]], 0))
    tau = self.inference_temperature if self.inference_temperature > 0 and not train else jnp.exp(log_tau)
    logits = jnp.einsum("...bqd,cd->...bqc", q, table) / tau
    allowed = jnp.concatenate([class_mask, jnp.ones((*class_mask.shape[:-1], 1), bool)], -1)  # background always
    return jnp.where(allowed[:, None, :], logits, MASKED_LOGIT)
