"""Semantic segmentation metrics from a confusion matrix, accumulated as a `clu.metrics.Metric`.

Definitions follow detectron2's `SemSegEvaluator` (the evaluator Mask2Former reports with) [default]:
with the confusion matrix N[g, p] over pixels whose ground truth is not ignored (an extra last column
p = K counts "no prediction", e.g. a void prediction of the ADE devkit format: a miss, never a false
positive),
  IoU_c = N[c, c] / (sum_p N[c, p] + sum_g N[g, c] - N[c, c]),
  mIoU = mean of IoU_c over classes present in the ground truth or the prediction,
  pixel_acc = sum_c N[c, c] / sum N,  mAcc = mean over classes in the ground truth of N[c, c] / sum_p N[c, p],
  fwIoU = sum_c (sum_p N[c, p] / sum N) IoU_c over the same classes as mIoU.
All on the 0-100 scale. Counts are int64 on the host so no split overflows.
"""
import flax
import numpy as np
from clu import metrics as clu_metrics


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_label: int = 255) -> np.ndarray:
  """int64 [K, K + 1] counts N[g, p] of ground truth g predicted as p, over pixels with label != ignore_label;
  a prediction of -1 ("no prediction") is counted in column K.

  Raises ValueError when a non-ignored label is outside [0, K) or a prediction outside [-1, K).
  """
  pred = np.asarray(pred).astype(np.int64).ravel()
  label = np.asarray(label).astype(np.int64).ravel()
  if pred.shape != label.shape:
    raise ValueError(f"prediction has {pred.size} pixels but the label has {label.size}")
  keep = label != ignore_label
  pred, label = pred[keep], label[keep]
  for what, values, low in (("label", label, 0), ("prediction", pred, -1)):
    if values.size and (values.min() < low or values.max() >= num_classes):
      bad = values[(values < low) | (values >= num_classes)][0]
      raise ValueError(f"{what} value {bad} is outside [{low}, {num_classes}) and is not the ignore label "
                       f"{ignore_label}; check num_classes / ignore_label / reduce_zero_label")
  pred = np.where(pred < 0, num_classes, pred)
  k1 = num_classes + 1
  return np.bincount(label * k1 + pred, minlength=num_classes * k1).reshape(num_classes, k1)


def metrics_from_confusion(matrix: np.ndarray) -> dict:
  """{'mIoU', 'fwIoU', 'mAcc', 'pixel_acc'} (0-100) and per-class 'IoU' [K] (NaN where absent) of an
  N [K, K + 1] confusion matrix."""
  full = np.asarray(matrix, np.float64)
  m = full[:, :-1]
  tp = np.diag(m)
  pos_gt = full.sum(1)
  pos_pred = m.sum(0)
  union = pos_gt + pos_pred - tp
  present = union > 0
  iou = np.full(len(m), np.nan)
  iou[present] = tp[present] / union[present]
  acc_valid = pos_gt > 0
  total = pos_gt.sum()
  if total == 0:
    raise ValueError("the confusion matrix is empty: no labelled pixel was evaluated")
  weights = pos_gt / total
  return {
      "mIoU": 100.0 * float(iou[present].mean()),
      "fwIoU": 100.0 * float((iou[present] * weights[present]).sum()),
      "mAcc": 100.0 * float((tp[acc_valid] / pos_gt[acc_valid]).mean()),
      "pixel_acc": 100.0 * float(tp.sum() / total),
      "IoU": 100.0 * iou,
  }


def chance_iou(pixel_counts: np.ndarray) -> np.ndarray:
  """Per-class IoU (0-100) of labelling every pixel uniformly at random with one of the K classes, from the
  ground-truth pixel counts n [K] (N = sum n), in the many-pixel limit:

    IoU_c = (n_c / K) / (n_c + N / K - n_c / K)

  (true positives n_c / K; predicted N / K; union = ground truth + predicted - true positives): 0 for a class
  without ground truth, which random labels predict all the same (NaN for every class when N = 0). The chance
  level of an open-vocabulary score: what a model that knows nothing of a class's name scores on it.
  """
  n = np.asarray(pixel_counts, np.float64)
  k, total = len(n), n.sum()
  if total == 0:
    return np.full(k, np.nan)
  return 100.0 * (n / k) / (n + total / k - n / k)


@flax.struct.dataclass
class SemanticConfusion(clu_metrics.Metric):
  """Confusion matrix N[g, p] (int64 [K, K + 1], host numpy) as a mergeable CLU metric."""
  matrix: np.ndarray

  @classmethod
  def empty(cls, num_classes: int) -> "SemanticConfusion":
    return cls(matrix=np.zeros((num_classes, num_classes + 1), np.int64))

  @classmethod
  def from_model_output(cls, predictions, labels, num_classes: int, ignore_label: int = 255,
                        **_) -> "SemanticConfusion":
    """predictions, labels: int [..., H, W] class ids (prediction -1: none) of images of one size."""
    return cls(matrix=confusion_matrix(predictions, labels, num_classes, ignore_label))

  def merge(self, other: "SemanticConfusion") -> "SemanticConfusion":
    if self.matrix.shape != other.matrix.shape:
      raise ValueError(f"cannot merge confusion matrices of shapes {self.matrix.shape} and {other.matrix.shape}")
    return type(self)(matrix=self.matrix + np.asarray(other.matrix, np.int64))

  def compute(self) -> dict:
    """Scalar metrics (see the module docstring); the per-class IoU is left out."""
    out = metrics_from_confusion(self.matrix)
    out.pop("IoU")
    return out
