"""DaTaSeg, ViTDet-L (ViT-L/16 + simple feature pyramid), 200 queries: the paper's largest setting.

  python scripts/train.py --config configs/dataseg_vitdet_l.py --workdir workdirs/vitl \
      --config.data_dir=/path/to/datasets

Paper (largest model): ADE20K 54.0 mIoU, COCO panoptic 53.5 PQ.
"""
from dataseg_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.paper_recipe(arg, "configs/dataseg_vitdet_l.py")
  b = c.model.backbone
  b.name = "vit"
  b.patch_size = 16
  b.hidden_dim = 1024
  b.num_layers = 24
  b.num_heads = 16
  b.mlp_dim = 4096
  b.window_size = 14
  b.global_blocks = (5, 11, 17, 23)
  b.rel_pos = True
  b.remat = True
  c.model.num_queries = 200
  c.data.max_segments = 200
  c.mesh.param_sharding = "fsdp"
  return c
