"""The peer: Hugging Face `transformers` Mask2Former (PyTorch, CPU) at our settings.

Random-initialised (no download), ResNet-50 backbone, 100 queries, the same image size and batch as
our R50 benchmark; times one training step (forward, Mask2Former loss, backward, AdamW) and the
eval forward per image. Needs the parity extra (`pip install -e .[parity]`).

  python scripts/bench_peer.py --image_size 512 --batch 2 --threads 2
"""
import argparse
import json
import resource
import time

import numpy as np


def build_model(num_queries: int, num_labels: int):
  """Mask2FormerForUniversalSegmentation with a torchvision-layout ResNet-50 (transformers' ResNet)."""
  from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
  backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                          out_features=["stage1", "stage2", "stage3", "stage4"])
  config = Mask2FormerConfig(backbone_config=backbone, num_queries=num_queries, num_labels=num_labels,
                             decoder_layers=10)  # 9 masked-attention layers + the initial prediction
  return Mask2FormerForUniversalSegmentation(config)


def synthetic_targets(batch: int, size: int, segments: int, num_labels: int, seed: int = 0):
  """`segments` random rectangles per image as binary masks and random class labels."""
  import torch
  rng = np.random.default_rng(seed)
  masks, labels = [], []
  for _ in range(batch):
    m = np.zeros((segments, size, size), np.float32)
    for k in range(segments):
      y0, x0 = rng.integers(0, size // 2, 2)
      h, w = rng.integers(size // 8, size // 2, 2)
      m[k, y0:y0 + h, x0:x0 + w] = 1
    masks.append(torch.from_numpy(m))
    labels.append(torch.from_numpy(rng.integers(0, num_labels, segments)))
  return masks, labels


def run(image_size: int = 512, batch: int = 2, num_queries: int = 100, threads: int = 2,
        steps: int = 3, segments: int = 20, num_labels: int = 150) -> dict:
  """Median train-step seconds and eval seconds per image of the peer, and peak RSS (GiB)."""
  import torch
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = build_model(num_queries, num_labels)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
  pixels = torch.rand(batch, 3, image_size, image_size)
  masks, labels = synthetic_targets(batch, image_size, segments, num_labels)
  model.train()
  times = []
  for _ in range(steps + 1):
    t0 = time.perf_counter()
    out = model(pixel_values=pixels, mask_labels=masks, class_labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
  model.eval()
  eval_times = []
  with torch.no_grad():
    for _ in range(steps + 1):
      t0 = time.perf_counter()
      model(pixel_values=pixels)
      eval_times.append((time.perf_counter() - t0) / batch)
  return {
      "peer": "transformers Mask2Former R50 (PyTorch CPU)",
      "image_size": image_size, "batch": batch, "num_queries": num_queries, "threads": threads,
      "train_step_s": float(np.median(times[1:])),
      "eval_s_per_image": float(np.median(eval_times[1:])),
      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
  }


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--image_size", type=int, default=512)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--queries", type=int, default=100)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--steps", type=int, default=3)
  a = p.parse_args()
  print(json.dumps(run(a.image_size, a.batch, a.queries, a.threads, a.steps), indent=1))


if __name__ == "__main__":
  main()
