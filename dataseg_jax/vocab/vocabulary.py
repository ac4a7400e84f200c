"""Dataset vocabularies and the union vocabulary shared by every dataset of a mixture.

A dataset's vocabulary is an ordered list of class names (dataset-local index k -> name) and a
thing/stuff flag per class. The union vocabulary has one row per distinct *normalised* name, so
datasets that use the same name share a row (and its text embedding); synonyms under different
names ('car', 'automobile') get separate rows whose text embeddings are close. Nothing is
registered globally: a `UnionVocab` is built from the config's dataset entries at start.

Built-in vocabularies (`BUILTIN`) hold the published class lists of ADE20K-150 (from
`objectInfo150.txt`/`.csv`), COCO panoptic 133 (`panoptic_coco_categories.json`) and Objects365 v2
(365 classes); the dataset files' own lists take precedence when they have them. Names files are read by
`dataseg_jax.vocab.names`.

Pure Python and numpy (no tf, no jax), importable from data_pipelines and from the model side.
"""
import dataclasses
import json
import pathlib
import re

import numpy as np

_HERE = pathlib.Path(__file__).resolve().parent
BUILTIN = {"ade150": "ade150.json", "coco133": "coco133.json", "objects365": "objects365.json"}
_SUFFIXES = ("-merged", "-stuff", "-other")


def normalise_name(name: str) -> str:
  """Canonical form used to decide that two datasets share a class row.

  Lower case; the first of a synonym list ('building, edifice' or 'building;edifice' -> 'building');
  COCO panoptic suffixes removed ('tree-merged' -> 'tree', 'wall-other-merged' -> 'wall');
  '_', '-' and '/' become spaces ('Cabinet/shelf' -> 'cabinet shelf'); runs of spaces collapsed.
  """
  n = name.strip().lower()
  n = re.split(r"[,;]", n)[0].strip()
  changed = True
  while changed:
    changed = False
    for suffix in _SUFFIXES:
      if n.endswith(suffix) and len(n) > len(suffix):
        n, changed = n[: -len(suffix)], True
  n = re.sub(r"[_\-/]+", " ", n)
  n = re.sub(r"\s+", " ", n).strip()
  if not n:
    raise ValueError(f"class name {name!r} is empty after normalisation; give the class a name")
  return n


@dataclasses.dataclass(frozen=True)
class DatasetVocab:
  """One dataset's label space: `names[k]` is the name of local class k; `is_thing[k]` its flag."""
  names: tuple
  is_thing: tuple

  def __post_init__(self):
    if len(self.names) != len(self.is_thing):
      raise ValueError(f"{len(self.names)} names but {len(self.is_thing)} thing flags")
    if not self.names:
      raise ValueError("a dataset vocabulary needs at least one class")


def load_builtin(key: str) -> tuple:
  """Built-in vocabulary -> (DatasetVocab, category ids [K]) in the dataset's own id order."""
  if key not in BUILTIN:
    raise ValueError(f"unknown built-in vocabulary {key!r}; expected one of {sorted(BUILTIN)}")
  cats = json.loads((_HERE / BUILTIN[key]).read_text())["categories"]
  vocab = DatasetVocab(tuple(c["name"] for c in cats), tuple(bool(c["isthing"]) for c in cats))
  return vocab, tuple(int(c["id"]) for c in cats)


@dataclasses.dataclass
class UnionVocab:
  """The union of the datasets' vocabularies (see docs/contracts.md, "Vocabulary").

  names: union class names `[C]` (normalised; one row per distinct normalised name).
  datasets: dataset entry names in config order `[D]`.
  class_mask: bool `[D, C]`, which union rows dataset d may predict.
  thing_mask: bool `[D, C]`, which of those are things in dataset d.
  local_to_union: list of int32 `[K_d]`, dataset-local class index -> union row.
  local_names: list of tuples, dataset d's own names (as written in its files), `[K_d]`.
  eval_only: names of the evaluation-only datasets (ratio 0), listed after the training ones.
  """
  names: list
  datasets: list
  class_mask: np.ndarray
  thing_mask: np.ndarray
  local_to_union: list
  local_names: list
  eval_only: tuple = ()

  @classmethod
  def from_datasets(cls, vocabs: dict, eval_only=()) -> "UnionVocab":
    """`{dataset name: DatasetVocab}` (ordered) -> UnionVocab; rows in order of first appearance.

    `eval_only` names datasets that are evaluated but not trained on; they must come after every
    training dataset in `vocabs`, so the training rows are a prefix that does not depend on them.
    """
    order = list(vocabs)
    if eval_only and order[len(order) - len(eval_only):] != list(eval_only):
      raise ValueError(f"evaluation-only datasets {list(eval_only)} must be the last of {order}")
    rows, names = {}, []
    for vocab in vocabs.values():
      for name in vocab.names:
        key = normalise_name(name)
        if key not in rows:
          rows[key] = len(names)
          names.append(key)
    d, c = len(vocabs), len(names)
    class_mask = np.zeros((d, c), bool)
    thing_mask = np.zeros((d, c), bool)
    local_to_union = []
    for i, (dname, vocab) in enumerate(vocabs.items()):
      idx = np.array([rows[normalise_name(n)] for n in vocab.names], np.int32)
      if len(set(idx.tolist())) != len(idx):
        dup = sorted({names[j] for j in idx.tolist() if (idx == j).sum() > 1})
        raise ValueError(f"dataset {dname!r}: several classes normalise to the same name {dup}; "
                         "rename them so each class of a dataset has a distinct name")
      class_mask[i, idx] = True
      thing_mask[i, idx] = np.asarray(vocab.is_thing, bool)
      local_to_union.append(idx)
    return cls(names=names, datasets=list(vocabs), class_mask=class_mask, thing_mask=thing_mask,
               local_to_union=local_to_union, local_names=[tuple(v.names) for v in vocabs.values()],
               eval_only=tuple(eval_only))

  @property
  def seen(self) -> np.ndarray:
    """bool `[C]`: union rows some training (not evaluation-only) dataset has."""
    training = [i for i, d in enumerate(self.datasets) if d not in self.eval_only]
    return self.class_mask[training].any(0)

  def dataset_index(self, name: str) -> int:
    """Index of dataset `name`, with an error that lists the known datasets."""
    if name not in self.datasets:
      raise ValueError(f"unknown dataset {name!r}; the vocabulary has {self.datasets}")
    return self.datasets.index(name)

  def summary(self) -> str:
    """Human-readable table: union size and names, per-dataset class counts and names (own name -> union
    row where they differ), and the rows shared between datasets."""
    lines = [f"union vocabulary: {len(self.names)} classes from {len(self.datasets)} datasets",
             "  rows: " + ", ".join(f"{j} {n}" for j, n in enumerate(self.names))]
    for i, d in enumerate(self.datasets):
      own = ", ".join(n if n == self.names[j] else f"{n} -> {self.names[j]}"
                      for n, j in zip(self.local_names[i], self.local_to_union[i].tolist()))
      lines.append(f"  {d}: {int(self.class_mask[i].sum())} classes "
                   f"({int(self.thing_mask[i].sum())} things)"
                   + (", evaluation only" if d in self.eval_only else "") + f": {own}")
    shared = np.nonzero(self.class_mask.sum(0) > 1)[0]
    if len(shared):
      lines.append("  shared rows: " + ", ".join(
          f"{self.names[j]} ({'+'.join(d for i, d in enumerate(self.datasets) if self.class_mask[i, j])})"
          for j in shared))
    return "\n".join(lines)
