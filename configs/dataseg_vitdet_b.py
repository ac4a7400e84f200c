"""DaTaSeg, ViTDet-B (plain ViT-B/16 + simple feature pyramid), the paper's three-dataset recipe.

  python scripts/train.py --config configs/dataseg_vitdet_b.py --workdir workdirs/vitb \
      --config.data_dir=/path/to/datasets

Single-dataset baselines: `configs/dataseg_vitdet_b.py:ade`, `:coco`, `:o365`. Initialise the
backbone from an MAE checkpoint converted for this config:

  python scripts/convert_weights.py --from mae --config configs/dataseg_vitdet_b.py \
      --input mae_pretrain_vit_base.pth --output vitb.npz
  python scripts/train.py ... --config.model.backbone.init_from=vitb.npz
"""
from dataseg_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.paper_recipe(arg, "configs/dataseg_vitdet_b.py")
  b = c.model.backbone
  b.name = "vit"
  b.patch_size = 16
  b.hidden_dim = 768
  b.num_layers = 12
  b.num_heads = 12
  b.mlp_dim = 3072
  b.window_size = 14
  b.global_blocks = (2, 5, 8, 11)
  b.rel_pos = True
  b.remat = True
  c.optimizer.backbone_multiplier = 0.1
  return c
