"""DataSeg end to end on tiny configs: shapes and dtypes, class masking, seeds, bf16, masked attention, FLOPs,
bad configs."""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toy
from dataseg_jax.models import dataseg
from dataseg_jax.models import layers
from dataseg_jax.models import transformer_decoder
from dataseg_jax.train import loop

C = 7  # union classes


def tiny(name: str):
  """(config.model, image size): the toy config, a width-8 ResNet-50, and tiny ViTDets."""
  c = toy.get_config()
  m = c.model
  size = 128
  if name == "r50":
    m.backbone.depth, m.backbone.width = 50, 8
    size = 64
  elif name.startswith("vit"):
    b = m.backbone
    b.name, b.patch_size, b.hidden_dim, b.num_layers, b.num_heads, b.mlp_dim = "vit", 16, 64, 2, 2, 128
    b.window_size, b.global_blocks, b.rel_pos = 2, (1,), name == "vit_relpos"
    size = 64
  if name != "toy":
    m.hidden_dim = m.mask_dim = 32
    m.num_queries, m.embed_dim = 6, 16
    m.pixel_decoder.num_layers, m.pixel_decoder.num_heads, m.pixel_decoder.ffn_dim = 1, 2, 32
    m.decoder.num_layers, m.decoder.num_heads, m.decoder.ffn_dim = 2, 2, 32
  return m, size


def inputs(m, size, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3)), jnp.uint8)
  embeddings = jnp.asarray(rng.normal(size=(C, m.embed_dim)), jnp.float32)
  class_mask = jnp.asarray([[True] * 4 + [False] * 3, [False] * 4 + [True] * 3][:batch])
  return images, embeddings, class_mask


def init_apply(m, size, seed=0, batch=2):
  model = dataseg.DataSeg(m)
  args = inputs(m, size, batch)
  variables = jax.jit(model.init)(jax.random.key(seed), *args)
  return variables, jax.jit(model.apply)(variables, *args)


@pytest.mark.parametrize("name", ["toy", pytest.param("r50", marks=pytest.mark.slow), "vit_relpos", "vit_norelpos"])
def test_output_shapes_and_dtypes(name):
  m, size = tiny(name)
  variables, out = init_apply(m, size)
  layers_ = m.decoder.num_layers + 1
  assert out["pred_logits"].shape == (layers_, 2, m.num_queries, C + 1)
  assert out["pred_masks"].shape == (layers_, 2, m.num_queries, size // 4, size // 4)
  assert out["pred_logits"].dtype == jnp.float32 and out["pred_masks"].dtype == jnp.float32
  assert set(variables["params"]) == {"backbone", "pixel_decoder", "transformer_decoder", "classifier"}
  assert np.isfinite(np.asarray(out["pred_masks"])).all()
  if name == "vit_relpos":
    assert "rel_pos_h" in variables["params"]["backbone"]["block_0"]["attn"]


def test_other_datasets_classes_get_zero_probability_background_allowed():
  m, size = tiny("toy")
  _, out = init_apply(m, size)
  _, _, class_mask = inputs(m, size)
  prob = np.asarray(jax.nn.softmax(out["pred_logits"], -1))
  allowed = np.concatenate([np.asarray(class_mask), np.ones((2, 1), bool)], -1)  # background always allowed
  for b in range(2):
    assert (prob[:, b][..., ~allowed[b]] == 0.0).all()
    assert (prob[:, b][..., allowed[b]] > 0.0).all()
  assert np.isfinite(np.asarray(out["pred_logits"])).all()


def test_same_seed_same_outputs_different_seed_different():
  m, size = tiny("toy")
  _, a = init_apply(m, size, seed=0)
  _, b = init_apply(m, size, seed=0)
  _, c = init_apply(m, size, seed=1)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    assert not np.allclose(np.asarray(a[k]), np.asarray(c[k]))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_activation_dtype_switch_keeps_float32_params_and_outputs(dtype):
  m, size = tiny("toy")
  m.dtype = dtype
  variables, out = init_apply(m, size)
  dtypes = {x.dtype for x in jax.tree.leaves(flax.core.meta.unbox(variables))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  for k in ("pred_logits", "pred_masks"):
    assert out[k].dtype == jnp.float32
    assert np.isfinite(np.asarray(out[k])).all()
  top = ("backbone", "pixel_decoder", "transformer_decoder")
  _, state = jax.jit(functools.partial(dataseg.DataSeg(m).apply, capture_intermediates=lambda mdl, _: mdl.name in top,
                                       mutable=["intermediates"]))(variables, *inputs(m, size))
  inter = state["intermediates"]
  queries, _ = inter["transformer_decoder"]["__call__"][0]  # mask logits are float32 by design
  activations = [x.dtype for x in jax.tree.leaves((inter["backbone"], inter["pixel_decoder"], queries))]
  assert set(activations) == {jnp.dtype(dtype)}


def test_forward_flops_positive_and_linear_in_batch():
  """The model FLOPs that MFU counts (benchmarks/bench_train.py: `loop.step_flops` of the forward) scale with the
  batch."""
  m, size = tiny("toy")
  model = dataseg.DataSeg(m)
  flops = []
  for batch in (1, 2):
    args = inputs(m, size // 2, batch)
    variables = jax.eval_shape(model.init, jax.random.key(0), *args)
    flops.append(loop.step_flops(jax.jit(model.apply), variables, *args))
  assert flops[0] > 1e6
  assert flops[1] == pytest.approx(2 * flops[0], rel=0.05)


def test_cross_attention_ignores_pixels_outside_query_mask():
  rng = np.random.default_rng(0)
  b, q, s, d = 2, 3, 10, 8
  x, mem = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((b, q, d), (b, s, d)))
  mask = rng.random((b, 1, q, s)) < 0.5
  mask[:, :, :, 0] = True
  attn = layers.Attention(2)
  params = attn.init(jax.random.key(0), x, mem, mem, mask)
  out = attn.apply(params, x, mem, mem, mask)
  for bi in range(b):
    for qi in range(q):
      outside = ~mask[bi, 0, qi]
      perturbed = np.asarray(mem).copy()
      perturbed[bi, outside] += 100 * rng.normal(size=(outside.sum(), d))
      new = attn.apply(params, x, perturbed, perturbed, mask)
      np.testing.assert_allclose(np.asarray(new[bi, qi]), np.asarray(out[bi, qi]), atol=1e-5)
      others = [j for j in range(q) if (mask[bi, 0, j] & outside).any()]
      if others:  # a query that does look at the perturbed pixels sees the change
        assert not np.allclose(np.asarray(new[bi, others]), np.asarray(out[bi, others]))


def test_decoder_layer_ignores_memory_masked_for_every_query():
  rng = np.random.default_rng(1)
  b, q, s, d = 2, 4, 12, 8
  x, qpos = (jnp.asarray(rng.normal(size=(b, q, d)), jnp.float32) for _ in range(2))
  mem, mpos = (jnp.asarray(rng.normal(size=(b, s, d)), jnp.float32) for _ in range(2))
  mask = np.ones((b, 1, q, s), bool)
  mask[..., 5:] = False  # no query may look at pixels 5..11
  layer = transformer_decoder.DecoderLayer(2, 16)
  params = layer.init(jax.random.key(0), x, qpos, mem, mpos, mask)
  out = layer.apply(params, x, qpos, mem, mpos, mask)
  perturbed = np.asarray(mem).copy()
  perturbed[:, 5:] = rng.normal(size=(b, s - 5, d)) * 50
  np.testing.assert_allclose(np.asarray(layer.apply(params, x, qpos, perturbed, mpos, mask)), np.asarray(out),
                             atol=1e-5)
  changed = np.asarray(mem).copy()
  changed[:, :5] += 1.0
  assert not np.allclose(np.asarray(layer.apply(params, x, qpos, changed, mpos, mask)), np.asarray(out))


def test_attention_mask_threshold_and_empty_mask_attends_everywhere():
  logits = np.full((1, 2, 8, 8), -5.0, np.float32)
  logits[0, 0, :4, :4] = 5.0  # query 0: top-left quarter; query 1: empty
  keep = np.asarray(transformer_decoder.attention_mask(jnp.asarray(logits), (2, 2)))
  assert keep.shape == (1, 1, 2, 4)
  np.testing.assert_array_equal(keep[0, 0, 0], [True, False, False, False])
  assert keep[0, 0, 1].all()


def test_embedding_width_mismatch_names_embed_dim():
  m, size = tiny("toy")
  images, embeddings, class_mask = inputs(m, size)
  with pytest.raises(ValueError, match=r"config\.model\.embed_dim"):
    jax.eval_shape(dataseg.DataSeg(m).init, jax.random.key(0), images, embeddings[:, :-1], class_mask)


@pytest.mark.parametrize("name", ["toy", "vit_relpos"])
def test_every_matrix_parameter_has_logical_axis_names(name):
  m, size = tiny(name)
  m.classifier = "learned"
  variables = jax.eval_shape(dataseg.DataSeg(m).init, jax.random.key(0), *inputs(m, size))
  boxed = lambda x: isinstance(x, flax.core.meta.Partitioned)
  unnamed, names = [], set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"], is_leaf=boxed)[0]:
    if boxed(leaf):
      assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
      names.update(n for n in leaf.names if n)
    elif len(leaf.shape) >= 2:
      unnamed.append(jax.tree_util.keystr(path))
  assert not unnamed
  assert names >= {"embed", "mlp", "heads", "conv_in", "conv_out", "queries", "vocab_embed", "classes"}


def test_inference_temperature_rescales_logits_outside_training_only():
  """logits = cos / tau: with inference_temperature t the eval logits are the training ones times tau / t
  (same class ranking), the -1e9 of other datasets' classes stays masked, and training keeps the learned tau."""
  m, size = tiny("vit_norelpos")
  m.inference_temperature = 0.0
  model, args = dataseg.DataSeg(m), inputs(m, size)
  variables = jax.jit(model.init)(jax.random.key(0), *args)
  train = np.asarray(model.apply(variables, *args, train=True)["pred_logits"])
  np.testing.assert_array_equal(np.asarray(model.apply(variables, *args)["pred_logits"]), train)  # 0: learned tau
  m.inference_temperature = 0.002
  sharp_model = dataseg.DataSeg(m)
  sharp = np.asarray(sharp_model.apply(variables, *args)["pred_logits"])
  np.testing.assert_array_equal(np.asarray(sharp_model.apply(variables, *args, train=True)["pred_logits"]), train)
  tau = float(np.exp(variables["params"]["classifier"]["log_temperature"]))
  allowed = train > -1e8
  np.testing.assert_allclose(sharp[allowed], train[allowed] * tau / 0.002, rtol=1e-4, atol=1e-3)
  assert (sharp[~allowed] <= -1e9).all() and tau == pytest.approx(m.temperature)
  np.testing.assert_array_equal(np.argmax(sharp, -1), np.argmax(train, -1))


def test_text_classifier_logits_are_cosines_to_text_and_shared_background_over_tau():
  """logit(q, c) = cos(W e_q + b, t_c) / tau and logit(q, bg) = cos(W e_q + b, t_bg) / tau [paper], recomputed in
  numpy from the module's parameters; classes outside the example's dataset get -1e9, the background never."""
  from dataseg_jax.models import classifier
  rng = np.random.default_rng(0)
  queries = jnp.asarray(rng.normal(size=(3, 2, 5, 12)), jnp.float32)  # [L, B, Q, D_q]
  text = jnp.asarray(rng.normal(size=(C, 16)) * rng.uniform(0.5, 3, (C, 1)), jnp.float32)
  class_mask = jnp.asarray([[True] * 4 + [False] * 3, [False, True] * 3 + [True]])
  module = classifier.TextClassifier(16, temperature=0.05)
  params = flax.core.meta.unbox(module.init(jax.random.key(1), queries, text, class_mask)["params"])
  got = np.asarray(module.apply({"params": params}, queries, text, class_mask, train=True), np.float64)
  q = np.asarray(queries, np.float64) @ np.asarray(params["proj"]["kernel"]) + np.asarray(params["proj"]["bias"])
  table = np.concatenate([np.asarray(text, np.float64), np.asarray(params["background"])[None]], 0)
  cos = np.einsum("lbqd,cd->lbqc", q / np.linalg.norm(q, axis=-1, keepdims=True),
                  table / np.linalg.norm(table, axis=-1, keepdims=True))
  allowed = np.concatenate([np.asarray(class_mask), np.ones((2, 1), bool)], -1)[None, :, None, :]
  np.testing.assert_allclose(got, np.where(allowed, cos / 0.05, classifier.MASKED_LOGIT), rtol=1e-5, atol=1e-4)
  assert float(np.exp(params["log_temperature"])) == pytest.approx(0.05)
