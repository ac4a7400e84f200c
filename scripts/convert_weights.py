"""Converts a pretrained state dict (a file you have) into this project's parameters: a backbone, or Mask2Former's
pixel decoder and transformer decoder; or takes those parts of a run of this project, to start another from.

  python scripts/convert_weights.py --from torchvision_resnet --depth 50 \
      --input resnet50-0676ba61.pth --output backbone.npz
  python scripts/convert_weights.py --from torchvision_resnet50 --input resnet50.pth --output backbone.npz
  python scripts/convert_weights.py --from mae --config configs/dataseg_vitdet_b.py \
      --input mae_pretrain_vit_base.pth --output vitb.npz
  python scripts/convert_weights.py --from hf_vitdet --config configs/dataseg_vitdet_b.py \
      --input model.safetensors --output vitb.npz
  python scripts/convert_weights.py --from hf_mask2former --config configs/dataseg_r50.py \
      --input model.safetensors --output m2f.npz
  python scripts/convert_weights.py --from dataseg --input workdirs/coco --output coco.npz \
      --parts backbone,pixel_decoder

Sources: `torchvision_resnet` (BN folded into a per-channel scale and bias, i.e. frozen BN; 1x1 convs as Dense
kernels); `mae`: an MAE checkpoint or any timm `VisionTransformer` state dict (cls token, mask token, final norm,
head and MAE decoder dropped); `hf_vitdet`: a transformers `VitDetModel` / `VitDetBackbone` state dict.
For the ViTs, `--config` is the config you will train with: its image size (or `--image_size`), window size and
global blocks fix the sizes of the position embedding (bicubic from the pretraining grid, as ViTDet) and of the
relative-position tables; the simple feature pyramid, and the relative-position tables of an MAE checkpoint, are
not in the file and are written from the model's own initialisation (seed `config.seed`; listed when converting),
so the `.npz` holds the whole backbone.
`hf_mask2former`: a transformers `Mask2FormerModel` / `Mask2FormerForUniversalSegmentation` state dict (see
dataseg_jax/models/convert_mask2former.py for the mapping) for the `--config` you will train with, whose sizes it
must match (a mismatch names the config key); `config.json` beside `--input` (or `--hf_config`) is read for what the
weights cannot show (heads, pre-norm). The pixel decoder and transformer decoder are converted, and the backbone when
it is a transformers ResNet; another backbone (Swin, ...) is left out: take ours from `--from torchvision_resnet*`
and `--config.model.backbone.init_from`. The class head is dropped: our classifier scores text embeddings and keeps
its initialisation.
`dataseg`: a training run of this project (`--input` its workdir; `--step`, default the latest checkpoint; the EMA
parameters when it kept an EMA), whose `--parts` (top-level subtrees; default backbone, pixel_decoder and
transformer_decoder) start another run (`--config.model.init_from`), e.g. one on another dataset. The classifier,
left out by default, holds the query projection, temperature and shared background embedding (and a learned
classifier's table of the run's classes).

The output is a flat `.npz` with '/'-joined keys. For a backbone (`layer1_0/conv1/kernel`, `block_0/attn/qkv/kernel`,
...) it holds the Flax `backbone` parameters, for `--config.model.backbone.init_from=FILE.npz`; for hf_mask2former the
model's top-level subtrees (`pixel_decoder/...`, `transformer_decoder/...`, `backbone/...`), as for dataseg, for
`--config.model.init_from=FILE.npz`. Read it back with `dataseg_jax.models.checkpoint_io.load_params_npz`, and put it
into a model's params with `checkpoint_io.merge_into(variables['params'], loaded)` (or `[...]['backbone']` for a
backbone). torch is needed only to read `.pth` files.
"""
import importlib.util
import json
import pathlib
import sys

from absl import flags

from dataseg_jax import cli
from dataseg_jax import trees

RESNET_DEPTHS = (18, 34, 50, 101)
RESNETS = ["torchvision_resnet"] + [f"torchvision_resnet{d}" for d in RESNET_DEPTHS]
VITS = ("hf_vitdet", "mae")
SOURCES = RESNETS + list(VITS) + ["hf_mask2former", "dataseg"]
DATASEG_PARTS = ("backbone", "pixel_decoder", "transformer_decoder")
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIGS = {"hf_mask2former": CONFIGS / "dataseg_r50.py", **{v: CONFIGS / "dataseg_vitdet_b.py" for v in VITS}}


def load_state_dict(path: pathlib.Path) -> dict:
  """A `.safetensors` file, or a `.pth` state dict (or a dict with a 'state_dict' / 'model' entry) read with
  weights_only=True."""
  if not path.is_file():
    sys.exit(f"--input {path}: no such file")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file
    return load_file(path)
  try:
    import torch
  except ImportError:
    sys.exit("convert_weights.py needs torch to read .pth files: pip install -e .[parity]")
  sd = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model"):
    if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
      sd = sd[key]
  return {k.removeprefix("module."): v for k, v in sd.items()}


def load_config(spec: str):
  """`get_config([arg])` of a config file given as `path[:arg]`, as scripts/train.py's --config reads it."""
  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    sys.exit(f"--config {path}: no such file")
  module_spec = importlib.util.spec_from_file_location("config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def convert_vit(source: str, state_dict: dict, config, image_size: int):
  """(the whole ViTDet backbone of `config.model` at `image_size`, the keys taken from its initialisation).

  Raises ValueError when the checkpoint does not fit the config: a shape differs, it has blocks the config lacks
  (merge_into), or it lacks part of the trunk (patch embedding, position embedding, a block's norms or linears).
  """
  import flax
  import jax
  import jax.numpy as jnp
  from dataseg_jax.models import checkpoint_io, dataseg, vit

  b = config.model.backbone
  grid = (image_size // b.patch_size, image_size // b.patch_size)
  if source == "hf_vitdet":
    trunk = vit.convert_hf_vitdet(state_dict, grid, b.window_size, tuple(b.global_blocks))
  else:
    trunk = vit.convert_mae(state_dict, grid)
  model = dataseg.build_backbone(config.model, jnp.float32)
  init = jax.jit(model.init)(jax.random.key(config.seed), jnp.zeros((1, image_size, image_size, 3)))
  init = jax.device_get(flax.core.meta.unbox(init["params"]))
  params = checkpoint_io.merge_into(init, trunk, "backbone")
  from_init = sorted(set(trees.flatten(init)) - set(trees.flatten(trunk)))
  lacking = [k for k in from_init if k.startswith(("patch_embed/", "pos_embed", "block_"))
             and not k.endswith(("/rel_pos_h", "/rel_pos_w"))]
  if lacking:
    raise ValueError(f"the checkpoint has no {lacking[:3]}: config.model.backbone (num_layers={b.num_layers}) "
                     f"is not the checkpoint's ViT")
  return params, from_init


def hf_config_json(path: pathlib.Path | None, weights: pathlib.Path) -> dict | None:
  """The transformers config.json given by --hf_config, else the one beside the weights, else None."""
  if path is not None and not path.is_file():
    sys.exit(f"--hf_config {path}: no such file")
  path = path or weights.with_name("config.json")
  return json.loads(path.read_text()) if path.is_file() else None


def convert_m2f(state_dict: dict, config, hf_config: dict | None):
  """(params {'pixel_decoder', 'transformer_decoder'[, 'backbone']} fitted to `config.model`, notes to print)."""
  from dataseg_jax.models import convert_mask2former
  params, notes = convert_mask2former.convert_hf_mask2former(state_dict, config.model, hf_config)
  convert_mask2former.check_against_model(params, config.model, config.data.image_size)
  return params, notes


def convert_dataseg(workdir: pathlib.Path, step, parts) -> dict:
  """The `parts` (top-level subtrees) of the parameters of the dataseg-jax run in `workdir` at checkpoint `step`
  (None: the latest), its EMA when the run kept one (`checkpointing.restore_variables`)."""
  import jax
  from dataseg_jax.train import checkpointing

  if not workdir.is_dir():
    raise ValueError(f"--input {workdir}: not a directory; --from dataseg reads a training run's workdir")
  try:
    params = jax.device_get(checkpointing.restore_variables(str(workdir), step)["params"])
  except FileNotFoundError as e:
    raise ValueError(str(e)) from e
  unknown = [p for p in parts if p not in params]
  if unknown or not parts:
    raise ValueError(f"--parts {','.join(parts)}: expected some of {','.join(sorted(params))}")
  return {p: params[p] for p in parts}


def summarize_keys(keys) -> str:
  """'sfp_4_up1, res2_lateral, ...; rel_pos_h/w of blocks [0, 1, ...]' for the keys not in the checkpoint."""
  modules = sorted({k.split("/")[0] for k in keys if not k.startswith("block_")})
  rel_pos = sorted({int(k.split("/")[0][6:]) for k in keys if k.startswith("block_")})
  parts = [", ".join(modules)] if modules else []
  if rel_pos:
    parts.append(f"rel_pos_h/w of blocks {rel_pos}")
  return "; ".join(parts)


def convert(source: str, input_path, output, depth=None, config=None, hf_config=None, image_size=None, step=None,
            parts=DATASEG_PARTS) -> str:
  """Converts `input_path` from `source` (SOURCES) and writes `output`; returns what was written. ValueError when the
  weights do not fit the config or the flags disagree."""
  from dataseg_jax.models import checkpoint_io, resnet

  if source not in SOURCES:
    raise ValueError(f"--from {source}: expected one of {', '.join(SOURCES)}")
  if depth is not None and depth not in resnet.STAGES:
    raise ValueError(f"--depth {depth}: expected one of {sorted(resnet.STAGES)}")
  input_path, output = pathlib.Path(input_path), pathlib.Path(output)
  config_path = config or str(DEFAULT_CONFIGS.get(source, ""))
  if source == "dataseg":
    params = convert_dataseg(input_path, step, tuple(parts))
    what = f"{', '.join(parts)} of {input_path}"
  elif source == "hf_mask2former":
    cfg = load_config(config_path)
    params, notes = convert_m2f(load_state_dict(input_path), cfg,
                                hf_config_json(pathlib.Path(hf_config) if hf_config else None, input_path))
    what = f"Mask2Former {', '.join(sorted(params))} for {pathlib.Path(config_path).name}"
    for note in notes:
      print(note)
  elif source in VITS:
    cfg = load_config(config_path)
    if cfg.model.backbone.name != "vit":
      raise ValueError(f"--from {source} needs a ViT config; {config_path} has backbone {cfg.model.backbone.name!r}")
    size = image_size or cfg.data.image_size
    params, from_init = convert_vit(source, load_state_dict(input_path), cfg, size)
    what = f"ViT backbone for {pathlib.Path(config_path).name} at {size} px"
    if from_init:
      print(f"not in the checkpoint, from the model's initialisation: {summarize_keys(from_init)}")
  else:
    named = int(source.removeprefix("torchvision_resnet") or 0) or None
    if named and depth and named != depth:
      raise ValueError(f"--from {source} names depth {named} but --depth is {depth}")
    depth = named or depth or 50
    params = resnet.convert_torchvision_resnet(load_state_dict(input_path), depth)
    what = f"ResNet-{depth} backbone"
  checkpoint_io.save_params_npz(output, params)
  n = sum(v.size for v in trees.flatten(params).values())
  return f"{what}, {n / 1e6:.2f} M parameters"


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so tests can import `convert` without them."""
  flags.DEFINE_enum("from", None, SOURCES, "torchvision_resnet with --depth, or the depth in the name "
                    "(torchvision_resnet50); mae (MAE / timm ViT) or hf_vitdet with --config; hf_mask2former "
                    "(transformers) with --config; dataseg (a run of this project) with --parts.")
  flags.DEFINE_integer("depth", None, "ResNet depth (18, 34, 50, 101) for --from torchvision_resnet; default 50.")
  flags.DEFINE_string("config", None, "ViT, hf_mask2former: the training config file[:arg] whose model (and "
                      "data.image_size) the output fits; default configs/dataseg_vitdet_b.py (ViT), "
                      "configs/dataseg_r50.py (hf_mask2former).")
  flags.DEFINE_string("hf_config", None, "hf_mask2former: the checkpoint's config.json; default the one beside "
                      "--input, if any.")
  flags.DEFINE_integer("image_size", None, "ViT: the image size the output fits; default the config's "
                       "data.image_size.")
  flags.DEFINE_integer("step", None, "dataseg: the checkpoint step; default the latest.")
  flags.DEFINE_list("parts", list(DATASEG_PARTS), "dataseg: the top-level subtrees to write.")
  flags.DEFINE_string("input", None, "The state dict to convert: a .pth or .safetensors file; for dataseg, a "
                      "training workdir.")
  flags.DEFINE_string("output", None, "The .npz to write.")
  flags.mark_flags_as_required(["from", "input", "output"])


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    what = convert(f["from"].value, f.input, f.output, f.depth, f.config, f.hf_config, f.image_size, f.step,
                   f.parts)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {f.output}: {what}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
