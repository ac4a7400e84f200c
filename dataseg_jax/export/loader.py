"""Loads and runs an exported DataSeg with nothing but jax and numpy (no flax, no training code).

An export directory holds:
  model.stablehlo   `jax.export` serialized function f(params, images, image_sizes, class_embeddings,
                    class_mask, thing_mask) -> dict of outputs (see `dataseg_jax.export.exporter`);
  params.npz        the weights, one array per '/'-joined parameter path;
  embeddings.npy    float32 [C_max, D] class-name embeddings (rows past the vocabulary are zero);
  names.txt         the vocabulary, one class name a line; things.txt its thing classes (both read by the one names
                    reader, `dataseg_jax.vocab.names`);
  config.json       image size, batch size, C_max, output kind, thresholds, text encoder and prompts.
This file imports only the standard library, numpy, jax, that pure-Python names reader and the pure-Python
`dataseg_jax.trees` (no flax, tf, optax, orbax or training code).
"""
import json
import os

import jax
import numpy as np
from jax import export as jax_export

from dataseg_jax import trees
from dataseg_jax.vocab import names as names_lib


class ExportedModel:
  """A served DataSeg: `__call__(images uint8 [B, S, S, 3], image_sizes [B, 2])` -> dict of numpy outputs.

  `set_vocabulary(names, embeddings [n, D], things)` swaps the classifier (n <= C_max) without re-export.
  """

  def __init__(self, path: str):
    for f in ("model.stablehlo", "params.npz", "embeddings.npy", "names.txt", "config.json"):
      if not os.path.isfile(os.path.join(path, f)):
        raise FileNotFoundError(f"{os.path.join(path, f)} not found; {path} is not a dataseg export directory "
                                f"(write one with scripts/export.py)")
    with open(os.path.join(path, "config.json")) as f:
      self.config = json.load(f)
    with open(os.path.join(path, "model.stablehlo"), "rb") as f:
      self.exported = jax_export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(path, "params.npz")) as z:
      self.params = jax.device_put(trees.unflatten({k: z[k] for k in z.files}))
    names = names_lib.read_names(os.path.join(path, "names.txt"))
    things_path = os.path.join(path, "things.txt")
    things = set(names_lib.read_names(things_path, allow_empty=True)) if os.path.isfile(things_path) else set()
    self._trained_names = names  # a learned class table classifies these only
    self.set_vocabulary(names, np.load(os.path.join(path, "embeddings.npy"))[:len(names)],
                        [n in things for n in names])

  @property
  def image_size(self) -> int:
    return int(self.config["image_size"])

  @property
  def batch_size(self) -> int:
    return int(self.config["batch_size"])

  def set_vocabulary(self, names, embeddings, things) -> None:
    """Pads `embeddings` [n, D] to [C_max, D] and masks the padding out of every prediction."""
    c_max, dim = int(self.config["max_classes"]), int(self.config["embed_dim"])
    embeddings = np.asarray(embeddings, np.float32)
    if self.config["model"].get("classifier") == "learned" and list(names) != self._trained_names:
      raise ValueError("this export's classifier is a learned table of its own classes (model.classifier="
                       "'learned'), which ignores class embeddings: its vocabulary cannot be swapped")
    if len(names) > c_max:
      raise ValueError(f"the vocabulary has {len(names)} names but this export takes at most {c_max}; "
                       f"re-export with --max_classes {len(names)}")
    if embeddings.shape != (len(names), dim):
      raise ValueError(f"embeddings are {embeddings.shape}; expected ({len(names)}, {dim})")
    self.names = list(names)
    self.embeddings = np.zeros((c_max, dim), np.float32)
    self.embeddings[:len(names)] = embeddings
    self.class_mask = np.arange(c_max) < len(names)
    self.thing_mask = np.zeros(c_max, bool)
    self.thing_mask[:len(names)] = np.asarray(things, bool)

  def __call__(self, images: np.ndarray, image_sizes=None) -> dict:
    """images: uint8 [B, S, S, 3], each image at the top left, padded bottom and right; image_sizes: its
    (h, w) [B, 2] (default: S, S), outside of which no segment reaches."""
    images = np.asarray(images)
    want = (self.batch_size, self.image_size, self.image_size, 3)
    if images.dtype != np.uint8:
      raise ValueError(f"images are {images.dtype}; this export takes uint8 pixels in 0..255")
    if images.shape != want:
      raise ValueError(f"images are {images.shape}; this export takes {want} (resize the longer side to "
                       f"{self.image_size} and pad)")
    if image_sizes is None:
      image_sizes = np.full((self.batch_size, 2), self.image_size)
    image_sizes = np.asarray(image_sizes, np.int32)
    if image_sizes.shape != (self.batch_size, 2) or (image_sizes < 1).any() or (image_sizes > self.image_size).any():
      raise ValueError(f"image_sizes must be [{self.batch_size}, 2] (h, w) pairs in 1..{self.image_size}, got "
                       f"{image_sizes.tolist()}")
    out = self.exported.call(self.params, images, image_sizes, self.embeddings, self.class_mask,
                             self.thing_mask)
    return jax.tree.map(np.asarray, out)
