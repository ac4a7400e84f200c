"""Cost report of the train step by part: FLOPs, bytes and gather/scatter ops from XLA, and their roofline bounds.

  python benchmarks/bench_costs.py --out costs.json                 # R50 512 / 1024 and ViT-B 1024, both samplings
  python benchmarks/bench_costs.py --out costs.json --time          # also times the parts of r50_512 on this CPU

For each config (`CONFIGS`: the recipes at the sizes users train, batch 16 at 1024 px) and each criterion sampling
(config.loss.sampling 'points' and 'dense'), every part of the step is traced on abstract inputs and compiled for
the CPU (nothing is allocated or run, so ViT-B at 1024 px is costed on a laptop) and XLA's cost analysis of the
compiled module gives its FLOPs and bytes accessed; gather and scatter ops are counted in that module. Parts,
forward and backward where they train:

  backbone, pixel_decoder, transformer_decoder (with the classifier), each as a function of its inputs and params
  criterion/costs            the matching costs of every decoder layer (no gradient)
  criterion/point_indices    'points' only: importance sampling's choice of points (no gradient)
  criterion/class_and_box    loss_ce and loss_proj of every layer, forward and backward
  criterion/mask_and_dice    loss_mask and loss_dice of every layer, forward and backward (all losses minus the
                             previous line, which the criterion computes together)
  matching                   the Hungarian solve: scipy on the host on CPUs and GPUs (no XLA cost; its time is in
                             benchmarks/bench_losses.py), the device solver elsewhere
  optimizer                  AdamW update and apply
  step                       the whole jitted train step

From the FLOPs F and bytes B of each part, the lower bound of its time on a device with peak P FLOP/s and memory
bandwidth W is max(F / P, B / W) (`PEAKS`: H100 SXM and TPU v5e, dense bf16 and HBM, published), and the best MFU
the step could reach is its model FLOPs (3 x the forward pass) over the sum of the parts' bounds times P. The bytes
are the CPU backend's after its fusion, which differs from a GPU's or a TPU's: the bounds are estimates, not
measurements. With --time, each part of r50_512 (batch 2, float32) is also run and timed here.
"""
import argparse
import functools
import json
import pathlib
import re
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dataseg_jax import contract, hardware
from dataseg_jax.losses import criterion as criterion_lib
from dataseg_jax.losses import mask_losses, matching
from dataseg_jax.models import classifier as classifier_lib
from dataseg_jax.models import dataseg, pixel_decoder as pixel_decoder_lib
from dataseg_jax.models import transformer_decoder as decoder_lib

import bench_train  # the sibling files of benchmarks/ (a script's own folder comes first on sys.path)
import timing

PEAKS = {"H100": (989e12, 3.35e12), "TPU v5e": (197e12, 0.819e12)}  # (dense bf16 FLOP/s, HBM bytes/s)
CLASSES_PER_DATASET = 150


def _r50(size, batch):
  c = bench_train.load_config("dataseg_r50")
  c.data.image_size = c.data.eval_size = size
  c.data.batch_size = batch
  return c


def _vitb(size, batch):
  c = bench_train.load_config("dataseg_vitdet_b")
  c.data.image_size = c.data.eval_size = size
  c.data.batch_size = batch
  c.model.backbone.remat = True
  return c


CONFIGS = {"r50_512": lambda: _r50(512, 16), "r50_1024": lambda: _r50(1024, 16), "vitb_1024": lambda: _vitb(1024, 16)}


def compiled_costs(fn, *args) -> dict:
  """GFLOPs, GB accessed and gather/scatter count of `fn(*args)` compiled for the CPU (args may be abstract: nothing
  runs). The compiled module is XLA's after fusion and its rewrites (a cumsum's reduce-window becomes a tree);
  the lowered module would count every unfused intermediate as memory traffic."""
  compiled = jax.jit(fn).trace(*args).lower(lowering_platforms=("cpu",)).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  text = compiled.as_text()
  return {"gflops": float(cost.get("flops", 0.0)) / 1e9, "gbytes": float(cost.get("bytes accessed", 0.0)) / 1e9,
          "gathers": len(re.findall(r"= \S+ gather\(", text)), "scatters": len(re.findall(r"= \S+ scatter\(", text))}


def _sum_of(tree) -> jax.Array:
  return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree))


def _trained(apply):
  """Forward and backward of `apply(params, *inputs)` with respect to params and inputs."""
  return jax.grad(lambda p, *x: _sum_of(apply(p, *x)), argnums=(0, 1))


class Parts:
  """The step's parts as functions, with abstract inputs, for one config."""

  def __init__(self, config):
    self.config = config
    m = config.model
    self.dtype = jnp.dtype(m.dtype)
    self.vocab, emb = bench_train.synthetic_vocab(3, CLASSES_PER_DATASET, m.embed_dim)
    self.model = dataseg.DataSeg(m)
    d = config.data
    self.batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                              bench_train.synthetic_batch(config, self.vocab, 0, np.random.default_rng(0)))
    self.emb = jax.ShapeDtypeStruct(emb.shape, jnp.float32)
    self.mask = jax.ShapeDtypeStruct((d.batch_size, self.vocab.class_mask.shape[1]), jnp.bool_)
    self.params = jax.eval_shape(lambda: flax.core.meta.unbox(self.model.init(
        jax.random.key(0), jnp.zeros((1, d.image_size, d.image_size, 3), jnp.uint8), jnp.zeros(emb.shape),
        jnp.ones((1, self.mask.shape[1]), bool)))["params"])
    pd, dc = m.pixel_decoder, m.decoder
    self.backbone = dataseg.build_backbone(m, self.dtype)
    self.pixel_decoder = pixel_decoder_lib.PixelDecoder(m.hidden_dim, m.mask_dim, pd.num_layers, pd.num_heads,
                                                        pd.num_points, pd.ffn_dim, self.dtype)
    self.decoder = decoder_lib.TransformerDecoder(m.num_queries, dc.num_layers, dc.num_heads, dc.ffn_dim,
                                                  m.mask_dim, self.dtype)
    self.classifier = classifier_lib.TextClassifier(m.embed_dim, m.temperature, m.classifier == "learned",
                                                    self.dtype, m.inference_temperature)
    x = jax.ShapeDtypeStruct(self.batch["image"].shape, self.dtype)
    self.x = x
    self.feats = jax.eval_shape(self.run_backbone, self.params["backbone"], x)
    self.memory = jax.eval_shape(self.run_pixel_decoder, self.params["pixel_decoder"], self.feats)
    self.outputs = jax.eval_shape(lambda p, i, e, k: self.model.apply({"params": p}, i, e, k, train=True),
                                  self.params, self.batch["image"], self.emb, self.mask)

  def run_backbone(self, p, x):
    return self.backbone.apply({"params": p}, x)

  def run_pixel_decoder(self, p, feats):
    return self.pixel_decoder.apply({"params": p}, feats)

  def run_decoder(self, p, memory):
    queries, masks = self.decoder.apply({"params": p["transformer_decoder"]}, *memory)
    logits = self.classifier.apply({"params": p["classifier"]}, queries, jnp.zeros(self.emb.shape),
                                   jnp.ones(self.mask.shape, bool), train=True)
    return logits, masks

  def model_parts(self) -> dict:
    dec_params = {k: self.params[k] for k in ("transformer_decoder", "classifier")}
    return {"backbone": (_trained(self.run_backbone), self.params["backbone"], self.x),
            "pixel_decoder": (_trained(self.run_pixel_decoder), self.params["pixel_decoder"], self.feats),
            "transformer_decoder": (_trained(self.run_decoder), dec_params, self.memory)}

  def criterion_parts(self) -> dict:
    """The criterion's passes as in criterion.py, each over every decoder layer; the batch entries are an input."""
    config = self.config
    ex_abs = {k: self.batch[k] for k in ("task", "segment_map", "seg_class", "seg_is_thing", "seg_box",
                                          "seg_valid", "seg_has_mask")}
    layers, b, q = self.outputs["pred_logits"].shape[:3]
    n = self.batch["seg_class"].shape[1]
    h, w = self.outputs["pred_masks"].shape[-2:]
    matches = jax.ShapeDtypeStruct((layers, b, n), jnp.int32)
    stride = config.loss.dense_stride
    dense = config.loss.sampling == "dense"
    source = criterion_lib.random_points(config, b)

    def targets(ex):
      if not dense:
        return jnp.zeros((b, 1, 1))
      return jax.vmap(lambda sm: mask_losses.dense_targets(sm, n, (h // stride, w // stride)))(ex["segment_map"])

    def costs(o, ex):
      t = targets(ex)

      def layer(lg, m, key):
        if dense:
          return criterion_lib.layer_cost(lg, m, ex, criterion_lib.dense_cost_samples(stride), t, config)[0]
        return criterion_lib.layer_cost(lg, m, ex, criterion_lib.point_cost_samples(n), source.match(key), config)[0]

      return jax.lax.map(lambda a: layer(*a),
                         (o["pred_logits"], o["pred_masks"], jax.random.split(jax.random.key(0), layers)))

    def point_indices(o, ex, match):
      return jax.lax.map(lambda a: criterion_lib.layer_point_indices(a[0], a[1], ex, a[2], a[3], source, config),
                         (o["pred_logits"], o["pred_masks"], match, jax.random.split(jax.random.key(1), layers)))

    def class_and_box(o, ex, match):
      def layer(lg, m, k):
        groups, merged = jax.vmap(lambda x, e: criterion_lib.merged_predictions(x, e, config))(lg, ex)
        return jax.vmap(lambda g, mp, mm, e, kk: criterion_lib.example_class_and_box_terms(g, mp, mm, e, kk, config))(
            groups, merged, m, ex, k)
      sums = jax.lax.map(lambda a: layer(*a), (o["pred_logits"], o["pred_masks"], match))
      return sums["ce_num"].sum() + sums["proj"].sum()

    def all_losses(o, ex, match):
      if dense:
        t = targets(ex)
        sums = jax.lax.map(lambda a: criterion_lib.dense_layer_losses(a[0], a[1], ex, a[2], t, config),
                           (o["pred_logits"], o["pred_masks"], match))
      else:
        keys = jax.random.split(jax.random.key(1), layers)
        idx = point_indices(o, ex, match)
        sums = jax.lax.map(lambda a: criterion_lib.layer_losses(a[0], a[1], ex, a[2], a[4], a[3], source, config),
                           (o["pred_logits"], o["pred_masks"], match, keys, idx))
      return sum(v.sum() for k, v in sums.items() if k != "without_loss")

    parts = {"criterion/costs": (costs, self.outputs, ex_abs)}
    if not dense:
      parts["criterion/point_indices"] = (point_indices, self.outputs, ex_abs, matches)
    parts["criterion/class_and_box"] = (jax.grad(class_and_box), self.outputs, ex_abs, matches)
    parts["criterion/all_losses"] = (jax.grad(all_losses), self.outputs, ex_abs, matches)
    parts["matching"] = (matching.hungarian_match_batch, jax.ShapeDtypeStruct((layers * b, q, n), jnp.float32))
    return parts

  def optimizer_part(self):
    from dataseg_jax.train import optimizer as optimizer_lib
    import optax
    tx = optimizer_lib.make_optimizer(self.config)
    opt_state = jax.eval_shape(tx.init, self.params)
    return (lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]), self.params, opt_state, self.params)

  def step_part(self):
    from dataseg_jax import sharding as sharding_lib
    from dataseg_jax.train import loop, optimizer as optimizer_lib, step as step_lib
    config = self.config
    tx = optimizer_lib.make_optimizer(config)
    components = loop.Components(self.model, lambda o, b, r: criterion_lib.criterion(o, b, config, r),
                                 self.vocab, np.zeros(self.emb.shape, np.float32), make_iterator=None)
    size = config.data.image_size
    abstract, _, _ = loop.init_state(config, components, sharding_lib.make_mesh(config), tx, (size, size, 3))
    fn = functools.partial(step_lib.train_step, model=self.model, loss_fn=components.loss_fn, tx=tx,
                           schedule=optimizer_lib.learning_rate_schedule(config), ema_decay=0.0, num_datasets=3)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    return (fn, abstract, self.batch, self.emb, jax.ShapeDtypeStruct(self.vocab.class_mask.shape, jnp.bool_))

  def forward_flops(self) -> float:
    fwd = compiled_costs(lambda p, i, e, m: self.model.apply({"params": p}, i, e, m, train=True), self.params,
                        self.batch["image"], self.emb, self.mask)
    return fwd["gflops"] * 1e9


def report(name: str, sampling: str) -> dict:
  """Every part's costs and roofline bounds for one config and sampling."""
  config = CONFIGS[name]()
  config.loss.sampling = sampling
  parts = Parts(config)
  fns = dict(parts.model_parts(), **parts.criterion_parts(), optimizer=parts.optimizer_part(), step=parts.step_part())
  out = {"config": name, "sampling": sampling, "image_size": config.data.image_size,
         "batch": config.data.batch_size, "num_queries": config.model.num_queries, "parts": {}}
  for part, (fn, *args) in fns.items():
    out["parts"][part] = compiled_costs(fn, *args)
  p = out["parts"]
  mask_and_dice = {k: p["criterion/all_losses"][k] - p["criterion/class_and_box"][k] for k in p["criterion/all_losses"]}
  p["criterion/mask_and_dice"] = mask_and_dice
  criterion_parts = ["criterion/costs", "criterion/point_indices", "criterion/all_losses"]
  crit = {k: sum(p[c][k] for c in criterion_parts if c in p) for k in ("gflops", "gbytes", "gathers", "scatters")}
  out["criterion"] = crit
  out["criterion_share_of_step"] = {k: crit[k] / p["step"][k] for k in ("gflops", "gbytes") if p["step"][k]}
  out["model_gflops"] = 3 * parts.forward_flops() / 1e9
  out["bounds"] = {}
  summed = [c for c in p if c not in ("step", "criterion/all_losses", "criterion/class_and_box",
                                       "criterion/mask_and_dice")] + ["criterion/all_losses"]
  for device, (peak, bandwidth) in PEAKS.items():
    bound = {c: max(p[c]["gflops"] * 1e9 / peak, p[c]["gbytes"] * 1e9 / bandwidth) for c in p}
    total = sum(bound[c] for c in summed)
    out["bounds"][device] = {"seconds": bound, "step_seconds_at_best": total,
                             "mfu_at_best": out["model_gflops"] * 1e9 / (total * peak)}
  return out


def time_parts(name: str, sampling: str, repeats: int = 3) -> dict:
  """Median seconds of each part compiled for this CPU, on zeros of the abstract inputs."""
  config = CONFIGS[name]()
  config.data.batch_size = 2
  config.model.dtype = "float32"
  config.loss.sampling = sampling
  parts = Parts(config)
  fns = dict(parts.model_parts(), **parts.criterion_parts(), optimizer=parts.optimizer_part())
  out = {}
  for part, (fn, *args) in fns.items():
    real = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), args)
    if part == "matching":
      real = [jnp.asarray(np.random.default_rng(0).normal(size=args[0].shape).astype(np.float32))]
    compiled = jax.jit(fn).lower(*real).compile()
    jax.block_until_ready(compiled(*real))
    out[part] = timing.median_seconds(lambda: jax.block_until_ready(compiled(*real)), repeats)
    hardware.release_freed_host_memory()
  return out


def markdown(results: list) -> str:
  rows = ["| config | sampling | part | GFLOP | GB | gathers | scatters | H100 bound ms | v5e bound ms |",
          "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    for part, c in r["parts"].items():
      h, v = (r["bounds"][d]["seconds"][part] * 1e3 for d in PEAKS)
      rows.append(f"| {r['config']} | {r['sampling']} | {part} | {c['gflops']:.1f} | {c['gbytes']:.1f} | "
                  f"{c['gathers']} | {c['scatters']} | {h:.2f} | {v:.2f} |")
  rows += ["", "| config | sampling | criterion share of step FLOPs | of bytes | criterion gathers + scatters | "
           "model GFLOP | H100 MFU at best | v5e MFU at best |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    s = r["criterion_share_of_step"]
    rows.append(f"| {r['config']} | {r['sampling']} | {100 * s['gflops']:.1f} % | {100 * s['gbytes']:.1f} % | "
                f"{r['criterion']['gathers'] + r['criterion']['scatters']} | {r['model_gflops']:.0f} | "
                f"{100 * r['bounds']['H100']['mfu_at_best']:.0f} % | {100 * r['bounds']['TPU v5e']['mfu_at_best']:.0f} % |")
  return "\n".join(rows)


def run(quick: bool = False) -> dict:
  """`benchmarks/bench.py`'s entry: the report of every config and sampling (and r50_512 timed unless quick)."""
  results = [report(name, sampling) for name in CONFIGS for sampling in ("points", "dense")]
  out = {"reports": results}
  if not quick:
    out["cpu_seconds_r50_512_batch2"] = {s: time_parts("r50_512", s) for s in ("points", "dense")}
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="costs.json", help="JSON with every number; a markdown table beside it (.md)")
  p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from " + ", ".join(CONFIGS))
  p.add_argument("--time", action="store_true", help="also time the parts of r50_512 at batch 2 on this CPU")
  a = p.parse_args()
  t0 = time.time()
  results = [report(name, s) for name in a.configs.split(",") for s in ("points", "dense")]
  out = {"reports": results, "device": jax.devices()[0].device_kind}
  if a.time:
    out["cpu_seconds_r50_512_batch2"] = {s: time_parts("r50_512", s) for s in ("points", "dense")}
  out["wall_s"] = round(time.time() - t0, 1)
  pathlib.Path(a.out).write_text(json.dumps(out, indent=1))
  table = markdown(results)
  pathlib.Path(a.out).with_suffix(".md").write_text(table + "\n")
  print(table)
  if a.time:
    print(json.dumps(out["cpu_seconds_r50_512_batch2"], indent=1))


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  main()
