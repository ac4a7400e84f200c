"""The one path rule for file names read from data files: relative, and inside their folder.

A dataset JSON's `file_name` (images, panoptic PNGs), an id of a benchmark's image list, the PNG names of a prediction
JSON, and every file a converter writes are joined to their folder (`root`) by `inside`. The name must be relative
and stay inside `root` once its `.` and `..` are resolved (lexically: a symlinked file or folder under `root` is fine,
as are sub-folders such as Objects365 v2's 'images/v1/patch8/objects365_v1_00420917.jpg'). An empty name, an absolute
path or one whose `..` climbs out of `root` is refused: `inside` raises `PathOutsideRoot` naming the data file and the
name; readers report `problem` as bad input of their dataset instead. So no reader opens, and no converter writes, a
file outside the folders it was given.

Pure Python (no tf, numpy or jax).
"""
import os
import pathlib


class PathOutsideRoot(ValueError):
  """A file name from a data file that is empty, absolute or leaves its folder."""


def problem(name) -> str | None:
  """What is wrong with `name` as a path relative to its folder ('is empty', 'is an absolute path', 'leaves its
  folder', ...), or None when it is fine."""
  name = str(name)
  if not name.strip():
    return "is empty"
  if os.path.isabs(name):
    return "is an absolute path"
  norm = os.path.normpath(name)
  if norm == ".":
    return "names the folder itself, not a file"
  if pathlib.PurePath(norm).parts[0] == "..":
    return "leaves its folder"
  return None


def inside(root, name, where: str) -> pathlib.Path:
  """`root / name` for a file name read from a data file (`where`: the data file and the item naming it), or
  PathOutsideRoot when `name` is not a relative path inside `root`."""
  issue = problem(name)
  if issue:
    raise PathOutsideRoot(f"{where}: file name {str(name)!r} {issue}; name files relative to {root} (no leading "
                          "'/', no '..' that leaves it)")
  return pathlib.Path(root) / os.path.normpath(str(name))
