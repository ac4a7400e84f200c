"""DataSeg: the whole DaTaSeg network [paper: a Mask2Former-style universal segmenter, all parameters shared].

  variables = DataSeg(config.model).init(rng, images, class_embeddings, class_mask)
  out = DataSeg(config.model).apply(variables, images, class_embeddings, class_mask, train=False)

images uint8/float [B, H, W, 3] raw RGB 0..255 (normalised here with the ImageNet mean and std);
class_embeddings float32 [C, D] frozen text embeddings (an input, not a parameter, so a vocabulary can be
swapped at inference); class_mask bool [B, C]. Returns
  pred_logits float32 [L, B, Q, C + 1]  (index C = the shared background; other datasets' classes at -1e9)
  pred_masks  float32 [L, B, Q, H/4, W/4]
with L = decoder.num_layers + 1 (initial queries first, last layer last).

Parameters: top-level `backbone`, `pixel_decoder`, `transformer_decoder`, `classifier`; float32, with
activations in `config.dtype`. Every parameter with two or more axes carries logical axis names
(`nn.with_logical_partitioning`; unbox with `flax.core.meta.unbox`); `config.mesh.param_sharding='logical'` maps
them to the mesh's 'data' and 'model' axes (`dataseg_jax/sharding.py`, `LOGICAL_RULES`):
  embed        model width (decoder / ViT hidden), on Dense kernels, position and level embeddings
  mlp          FFN hidden width, mask-feature and mask-embedding MLP outputs
  heads        attention projections (q, k, v, out; deformable offsets and weights)
  conv_in, conv_out   convolution channels (every conv kernel [kh, kw, conv_in, conv_out]; ResNet 1x1 Dense)
  queries      the learnable query features and positions
  vocab_embed  text-embedding width (classifier projection, background, learned class table)
  classes      rows of the learned class table (config.model.classifier='learned')
None marks an axis that is never sharded (kernel height and width, ViT relative-position tables).
"""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from dataseg_jax.models import classifier as classifier_lib
from dataseg_jax.models import pixel_decoder as pixel_decoder_lib
from dataseg_jax.models import resnet
from dataseg_jax.models import transformer_decoder as decoder_lib
from dataseg_jax.models import vit

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def build_backbone(cfg: ml_collections.ConfigDict, dtype) -> nn.Module:
  """The backbone config.model.backbone.name names: 'resnet' or 'vit' (config.validate refuses any other)."""
  b = cfg.backbone
  if b.name == "resnet":
    return resnet.ResNet(b.depth, b.width, b.remat, dtype, name="backbone")
  return vit.ViTDet(b.patch_size, b.hidden_dim, b.num_layers, b.num_heads, b.mlp_dim, b.window_size,
                    tuple(b.global_blocks), b.rel_pos, b.remat, cfg.hidden_dim, dtype, name="backbone")


class DataSeg(nn.Module):
  config: ml_collections.ConfigDict  # config.model

  @nn.compact
  def __call__(self, images, class_embeddings, class_mask, *, train: bool = False):
    # No dropout or batch statistics [default: dropout 0]: `train` changes only the classifier's temperature.
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = (images.astype(jnp.float32) - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    feats = build_backbone(cfg, dtype)(x.astype(dtype))
    pd = cfg.pixel_decoder
    memory, mask_features = pixel_decoder_lib.PixelDecoder(
        cfg.hidden_dim, cfg.mask_dim, pd.num_layers, pd.num_heads, pd.num_points, pd.ffn_dim, dtype,
        name="pixel_decoder")(feats)
    dc = cfg.decoder
    queries, masks = decoder_lib.TransformerDecoder(
        cfg.num_queries, dc.num_layers, dc.num_heads, dc.ffn_dim, cfg.mask_dim, dtype,
        name="transformer_decoder")(memory, mask_features)
    classifier = classifier_lib.TextClassifier(cfg.embed_dim, cfg.temperature, cfg.classifier == "learned", dtype,
                                               cfg.inference_temperature, name="classifier")
    logits = classifier(queries, class_embeddings, class_mask, train=train)
    return {"pred_logits": logits.astype(jnp.float32), "pred_masks": masks.astype(jnp.float32)}
