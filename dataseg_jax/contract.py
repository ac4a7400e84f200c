"""The batch contract shared by data_pipelines (producer) and the model, losses and evaluation (consumers).

Pure Python and numpy: importable from tf.data code and from JAX code alike (docs/contracts.md: who produces
and who reads it). Every example is padded to static shapes so that one compiled step serves every
dataset and task; the task and the dataset travel as data (`task`, `dataset_id`), never as static
arguments.

Per example (a batch adds a leading `[B]`):

| key             | dtype   | shape          | meaning                                               |
|-----------------|---------|----------------|-------------------------------------------------------|
| `image`         | uint8   | [H, W, 3]      | RGB, normalised on device                              |
| `valid`         | bool    | [H, W]         | false on padding                                       |
| `dataset_id`    | int32   | []             | index into the mixture's datasets and `class_mask`     |
| `task`          | int32   | []             | one of `Task`                                          |
| `segment_map`   | int32   | [H/s, W/s]     | segment index per pixel, -1 void; all -1 when box-only |
| `seg_class`     | int32   | [N]            | union-vocabulary class id (0 on padding)               |
| `seg_is_thing`  | bool    | [N]            |                                                        |
| `seg_box`       | float32 | [N, 4]         | normalised (y0, x0, y1, x1) in [0, 1] of the image     |
| `seg_valid`     | bool    | [N]            | false on padding                                       |
| `seg_has_mask`  | bool    | [N]            | false for box-only segments                            |

`s` is `config.data.label_stride` (1 by default). Boxes are in units of the padded image
(`image` shape), so box pixel (y, x) of a `[h, w]` grid covers `[y0 * h, y1 * h) x [x0 * w, x1 * w)`.
"""
import enum

import numpy as np


class Task(enum.IntEnum):
  """Supervision kind of an example; selects MERGE, the loss and post-processing (no task token)."""
  SEMANTIC = 0
  PANOPTIC = 1
  INSTANCE = 2
  BOX = 3  # box-only weak supervision (Objects365): projection loss, no masks.


TASK_NAMES = {t.name.lower(): t for t in Task}


def task_from_name(name: str) -> Task:
  """`'semantic'` -> `Task.SEMANTIC`, with an error that lists the valid names."""
  try:
    return TASK_NAMES[name.lower()]
  except KeyError:
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASK_NAMES)}") from None


VOID = -1  # `segment_map` value for void / ignored pixels.


def batch_spec(height: int, width: int, max_segments: int, label_stride: int = 1) -> dict:
  """Per-example `{key: (shape, numpy dtype)}` of the contract above."""
  if height % label_stride or width % label_stride:
    raise ValueError(f"image size {height}x{width} is not divisible by label_stride={label_stride}")
  n = max_segments
  return {
      "image": ((height, width, 3), np.uint8),
      "valid": ((height, width), np.bool_),
      "dataset_id": ((), np.int32),
      "task": ((), np.int32),
      "segment_map": ((height // label_stride, width // label_stride), np.int32),
      "seg_class": ((n,), np.int32),
      "seg_is_thing": ((n,), np.bool_),
      "seg_box": ((n, 4), np.float32),
      "seg_valid": ((n,), np.bool_),
      "seg_has_mask": ((n,), np.bool_),
  }
