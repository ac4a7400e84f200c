"""The peer: Hugging Face `transformers` Mask2Former (PyTorch) at our settings, on the CPU or a CUDA GPU.

Random-initialised (no download), ResNet-50 backbone, 100 queries, the same image size and batch as
our R50 benchmark; times one training step (forward, Mask2Former loss, backward, AdamW) and the
eval forward per image. `--dtype bfloat16` runs forward and loss under `torch.autocast` (weights and
optimizer float32, as our bf16 configs). With `--device cuda` it also reports the model FLOPs of one
forward (torch's FlopCounterMode, loss excluded) and MFU = 3 x forward FLOPs / step time / peak, with the
peak of `dataseg_jax.hardware` (the table our loop and benchmarks use). Needs the parity extra
(`pip install -e .[parity]`).

  python benchmarks/bench_peer.py --image_size 512 --batch 2 --threads 2
  python benchmarks/bench_peer.py --device cuda --dtype bfloat16 --image_size 1024 --batch 16
"""
import argparse
import contextlib
import json
import resource
import time

import numpy as np

from dataseg_jax import hardware

def build_model(num_queries: int, num_labels: int):
  """Mask2FormerForUniversalSegmentation with a torchvision-layout ResNet-50 (transformers' ResNet)."""
  from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
  backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                          out_features=["stage1", "stage2", "stage3", "stage4"])
  config = Mask2FormerConfig(backbone_config=backbone, num_queries=num_queries, num_labels=num_labels,
                             decoder_layers=10)  # 9 masked-attention layers + the initial prediction
  return Mask2FormerForUniversalSegmentation(config)


def synthetic_targets(batch: int, size: int, segments: int, num_labels: int, device: str = "cpu", seed: int = 0):
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
    masks.append(torch.from_numpy(m).to(device))
    labels.append(torch.from_numpy(rng.integers(0, num_labels, segments)).to(device))
  return masks, labels


def forward_flops(model, pixels) -> float:
  """FLOPs of one inference forward (torch.utils.flop_counter; matmuls and convolutions)."""
  import torch
  from torch.utils.flop_counter import FlopCounterMode
  counter = FlopCounterMode(display=False)
  with torch.no_grad(), counter:
    model(pixel_values=pixels)
  return float(counter.get_total_flops())


def timed(fn, device: str) -> float:
  """Seconds of one call of `fn`, synchronising a CUDA device before and after."""
  import torch
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  sync()
  t0 = time.perf_counter()
  fn()
  sync()
  return time.perf_counter() - t0


def run(image_size: int = 512, batch: int = 2, num_queries: int = 100, threads: int = 2,
        steps: int = 3, segments: int = 20, num_labels: int = 150, device: str = "cpu",
        dtype: str = "float32") -> dict:
  """Median train-step seconds and eval seconds per image of the peer, and peak memory (GiB): host RSS on the
  CPU, torch's peak allocation on a GPU; on a GPU also forward FLOPs and MFU."""
  import torch
  if device == "cuda" and not torch.cuda.is_available():
    raise SystemExit("bench_peer.py: --device cuda but torch sees no CUDA device")
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = build_model(num_queries, num_labels).to(device)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
  pixels = torch.rand(batch, 3, image_size, image_size, device=device)
  masks, labels = synthetic_targets(batch, image_size, segments, num_labels, device)
  autocast = (torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext())

  def train_step():
    with autocast:
      loss = model(pixel_values=pixels, mask_labels=masks, class_labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    opt.step()
    opt.zero_grad(set_to_none=True)

  def eval_forward():
    with torch.no_grad(), autocast:
      model(pixel_values=pixels)

  model.train()
  times = [timed(train_step, device) for _ in range(steps + 1)]
  model.eval()
  eval_times = [timed(eval_forward, device) / batch for _ in range(steps + 1)]
  result = {
      "peer": f"transformers Mask2Former R50 (PyTorch {device}, {dtype})", "device": device, "dtype": dtype,
      "image_size": image_size, "batch": batch, "num_queries": num_queries, "threads": threads,
      "train_step_s": float(np.median(times[1:])),
      "eval_s_per_image": float(np.median(eval_times[1:])),
  }
  if device == "cuda":
    name = torch.cuda.get_device_name()
    with autocast:
      flops = forward_flops(model, pixels)
    peak = hardware.peak_flops(name)
    result.update(device_name=name, peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30,
                  forward_tflop=flops / 1e12, images_per_s=batch / result["train_step_s"],
                  mfu=3 * flops / result["train_step_s"] / peak if peak else None)
  else:
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  return result


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--image_size", type=int, default=512)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--queries", type=int, default=100)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--out", default="", help="also write the JSON here")
  a = p.parse_args()
  result = run(a.image_size, a.batch, a.queries, a.threads, a.steps, device=a.device, dtype=a.dtype)
  text = json.dumps(result, indent=1)
  print(text)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  main()
