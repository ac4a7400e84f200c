"""Peak dense bf16 FLOP/s of accelerators, for MFU (model FLOPs utilisation) in the loop and the benchmarks.

Keyed by a substring of the device's name (`jax.Device.device_kind`, `torch.cuda.get_device_name()`);
values from the vendors' data sheets, dense (no sparsity). Pure Python: the PyTorch peer benchmark uses it too.
"""
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
              "TPU v6": 918e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def peak_flops(device_name: str) -> float | None:
  """Peak dense bf16 FLOP/s of the first `PEAK_FLOPS` key contained in `device_name`; None when unknown."""
  return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)
