"""Source `folder`: images on disk, no TFDS and no TensorFlow.

`config.data.folder_root` holds one of three layouts; a split name is looked up in order:
  1. `root/<split>/<class>/*.jpg|jpeg|png`: class folder names, sorted, give the labels;
  2. `root/<split>.txt` with lines `<relative path> <label>` (the NOAH / PETL-ViT VTAB-1k
     export: `train800.txt`, `val200.txt`, `train800val200.txt`, `test.txt`);
  3. the extracted DTD archive, `root/images/<class>/*.jpg` + `root/labels/train1.txt` etc.
     (`train`, `validation` and `test` mean the TFDS splits train1 / val1 / test1, and the
     VTAB names `train800`, `val200`, `train800val200` map to their TFDS definitions).

Split strings may slice and join like TFDS: `train[:800]+val[:200]`, `test[50%:]`. Folder
layouts (1, 3) are sliced in a fixed pseudo-random order (a hash of each file's path),
so `[:800]` covers all classes; list files keep their own order.

Everything is checked when the task is built, before any model or weights: every
class-folder split must hold the same classes, labels must lie in [0, num_classes), and
every image of a streamed split (the test split) is decoded once, so a corrupt file is
named at load time rather than at the first evaluation. Images are decoded by
`heat_jax.data.image_io` (the decoder `predict` uses too). Hidden entries (`.*`, such as
`.ipynb_checkpoints` or macOS `._x.jpg` files) and `__MACOSX` folders are ignored.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
from heat_jax.data import image_io, register_source
from heat_jax.data.base import Task
from heat_jax.data.preprocess import (check_resize_method, normalizer, resize_uint8,
                                      split_names)
from heat_jax.data.stream import Loader, default_workers, held_in_memory, make_splits
from heat_jax.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DECODE_ERRORS = image_io.DECODE_ERRORS
DTD_SPLITS = {"train": "train1", "validation": "val1", "test": "test1",
              "train800": "train1[:800]", "val200": "val1[:200]",
              "train800val200": "train1[:800]+val1[:200]"}
_PART = re.compile(r"^\s*([^\[\]]+?)\s*(?:\[\s*([^:\]]*)\s*:\s*([^\]]*)\s*\])?\s*$")

Entries = list[tuple[str, int]]   # (absolute image path, label)


def parse_split(expr: str) -> list[tuple[str, Optional[str], Optional[str]]]:
  """`a[:800]+b[10%:]` -> [('a', None, '800'), ('b', '10%', None)]."""
  parts = []
  for part in expr.split("+"):
    m = _PART.match(part)
    if not m:
      raise ConfigError(f"cannot parse split {expr!r}: use names joined with '+', each with an "
                        "optional [start:stop] slice, e.g. 'train[:800]+val[:200]'")
    parts.append((m.group(1), m.group(2) or None, m.group(3) or None))
  return parts


def _bound(value: Optional[str], n: int, expr: str, name: str,
           clamp: bool = False) -> Optional[int]:
  """A slice bound; like TFDS, an absolute bound beyond the split's size is an error
  (unless `clamp`)."""
  if value is None:
    return None
  try:
    if value.endswith("%"):
      return int(round(n * float(value[:-1]) / 100))
    bound = int(value)
  except ValueError:
    raise ConfigError(f"bad slice bound {value!r} in split {expr!r}; use an int or a "
                      "percentage such as 50%") from None
  if abs(bound) > n and not clamp:
    raise DataError(f"split {expr!r}: bound {bound} is beyond the {n} images of {name!r}; "
                    "use a smaller bound or a percentage")
  return bound


def _visible(path: Path) -> bool:
  """False for hidden entries and macOS archive debris, which are never data."""
  return not path.name.startswith(".") and path.name != "__MACOSX"


def _is_image(path: Path) -> bool:
  return _visible(path) and path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def image_files(root: str | Path) -> list[str]:
  """Every visible .jpg/.jpeg/.png under `root` (recursively), sorted by path."""
  root = Path(root)
  return sorted(str(f) for f in root.rglob("*")
                if _is_image(f) and all(_visible(p) for p in f.relative_to(root).parents
                                        if p != Path(".")))


def _class_dirs(split_dir: Path) -> list[Path]:
  return sorted(p for p in split_dir.iterdir() if p.is_dir() and _visible(p))


def _read_text(path: Path) -> str:
  try:
    return path.read_text(encoding="utf-8")
  except UnicodeDecodeError:
    raise DataError(f"list file {path} is not UTF-8 text; it needs lines "
                    "'<relative path> <label>'") from None


def _some(names: list[str], limit: int = 5) -> str:
  """'a, b, c' or 'a, b, c, d, e and 7 more'."""
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _hash_order(paths: list[str], root: Path) -> list[int]:
  keys = [hashlib.sha1(os.path.relpath(p, root).encode()).hexdigest() for p in paths]
  return sorted(range(len(paths)), key=keys.__getitem__)


class FolderDataset:
  """Resolves split expressions to (path, label) lists under one root."""

  def __init__(self, root: str, names: list[str]):
    self.root = Path(root).expanduser()
    if not self.root.is_dir():
      raise DataError(f"config.data.folder_root={root!r} is not a directory; point it at "
                      "<root>/<split>/<class>/*.jpg, NOAH-style <root>/<split>.txt lists or an "
                      "extracted dtd/ folder")
    dtd = self.root / "dtd" if (self.root / "dtd" / "labels").is_dir() else self.root
    self.dtd_root = dtd if (dtd / "images").is_dir() and (dtd / "labels").is_dir() else None
    # sorted class names of the class-folder splits `names` (or of DTD's images/)
    per_split = {name: {d.name for d in _class_dirs(self.root / name)}
                 for name in dict.fromkeys(names) if (self.root / name).is_dir()}
    self._check_same_classes(per_split)
    found = set().union(*per_split.values())
    if not found and self.dtd_root is not None:
      found = {d.name for d in _class_dirs(self.dtd_root / "images")}
    self.classes = sorted(found)
    self.class_index = {c: i for i, c in enumerate(self.classes)}

  def _check_same_classes(self, per_split: dict[str, set[str]]) -> None:
    """DataError naming each split's extra / missing class folders (vs the first split)."""
    if len({frozenset(c) for c in per_split.values()}) <= 1:
      return
    (ref_name, ref), *others = per_split.items()
    parts = []
    for name, classes in others:
      extra, missing = sorted(classes - ref), sorted(ref - classes)
      diff = ([f"extra {_some(extra)}"] if extra else []) + (
          [f"missing {_some(missing)}"] if missing else [])
      if diff:
        parts.append(f"{name}/ has {' and '.join(diff)}")
    raise DataError(f"class folders differ between splits under {self.root}: "
                    f"{'; '.join(parts)} (compared with {ref_name}/); labels are the sorted "
                    "folder names, so every split needs the same <class> folders")

  def split(self, expr: str, clamp: bool = False) -> Entries:
    """Entries of a split expression such as `train[:800]+val[:200]`."""
    entries: Entries = []
    for name, start, stop in parse_split(expr):
      items = self._named(name)
      lo, hi = (_bound(b, len(items), expr, name, clamp) for b in (start, stop))
      entries.extend(items[lo:hi])
    return entries

  def _named(self, name: str) -> Entries:
    if (self.root / name).is_dir():
      return self._class_folders(self.root / name)
    if (self.root / f"{name}.txt").is_file():
      return self._list_file(self.root / f"{name}.txt", self.root)
    if self.dtd_root is not None and (name in DTD_SPLITS or
                                      (self.dtd_root / "labels" / f"{name}.txt").is_file()):
      if name in DTD_SPLITS and DTD_SPLITS[name] != name:
        return self.split(DTD_SPLITS[name], clamp=True)   # VTAB names on a small copy
      return self._dtd_list(name)
    raise DataError(f"split {name!r} not found under {self.root}: expected a folder "
                    f"{self.root / name}/<class>/*.jpg or a list file {self.root / name}.txt; "
                    "set config.data.train_split / val_split / test_split to existing names")

  def _class_folders(self, split_dir: Path) -> Entries:
    index = self.class_index
    entries: Entries = []
    loose = sorted(f.name for f in split_dir.iterdir() if _is_image(f))
    if loose:
      raise DataError(f"{split_dir} holds images outside class folders ({_some(loose, 3)}); "
                      f"move them into {split_dir}/<class>/ folders")
    for d in _class_dirs(split_dir):
      files = sorted(str(f) for f in d.iterdir() if _is_image(f))
      if not files:
        raise DataError(f"class folder {d} has no {'/'.join(IMAGE_SUFFIXES)} images; add images "
                        "or remove the folder")
      entries.extend((f, index[d.name]) for f in files)
    if not entries:
      raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/*.jpg")
    return [entries[i] for i in _hash_order([p for p, _ in entries], self.root)]

  def _list_file(self, path: Path, base: Path) -> Entries:
    entries: Entries = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
      if not line.strip():
        continue
      fields = line.rsplit(maxsplit=1)
      if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        raise DataError(f"{path}:{lineno}: expected '<relative image path> <int label>', got "
                        f"{line.strip()!r}")
      entries.append((str(base / fields[0]), int(fields[1])))
    if not entries:
      raise DataError(f"list file {path} is empty; it needs lines '<relative path> <label>'")
    return entries

  def _dtd_list(self, name: str) -> Entries:
    index = self.class_index
    images = self.dtd_root / "images"
    entries: Entries = []
    for line in _read_text(self.dtd_root / "labels" / f"{name}.txt").split():
      cls = line.split("/")[0]
      if cls not in index:
        raise DataError(f"{self.dtd_root}/labels/{name}.txt lists {line!r} but {images}/{cls} "
                        "does not exist; re-extract the DTD archive")
      entries.append((str(images / line), index[cls]))
    if not entries:
      raise DataError(f"{self.dtd_root}/labels/{name}.txt is empty; re-extract the DTD archive")
    return [entries[i] for i in _hash_order([p for p, _ in entries], self.dtd_root)]


def make_loader(entries: Entries, *, image_size: int, resize_method: str) -> Loader:
  """index -> (uint8 [S, S, 3] image, label) read with PIL."""

  def load(index: int) -> tuple[np.ndarray, int]:
    path, label = entries[index]
    image = image_io.read_rgb(path)
    return resize_uint8(image, (image_size, image_size), resize_method), label

  return load


def unreadable(paths: list[str], workers: Optional[int] = None) -> list[tuple[str, str]]:
  """[(path, why)] of the images that PIL cannot decode, in the order given."""
  workers = default_workers() if workers is None else workers
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    return [(p, e) for p, e in zip(paths, pool.map(image_io.check_readable, paths)) if e]


def check_decodable(entries: Entries, expr: str, workers: Optional[int] = None) -> None:
  """Decodes every image once; DataError naming the first that fails (and how many)."""
  paths = list(dict.fromkeys(p for p, _ in entries))
  errors = unreadable(paths, workers)
  if errors:
    path, why = errors[0]
    raise DataError(f"split {expr!r}: {len(errors)} of {len(paths)} images cannot be read, "
                    f"first {path} ({why}); remove or replace them")


def check_entry_labels(entries: Entries, num_classes: int, expr: str) -> None:
  """DataError naming the first image whose label lies outside [0, num_classes)."""
  bad = [(p, label) for p, label in entries if not 0 <= label < num_classes]
  if bad:
    path, label = bad[0]
    raise DataError(f"split {expr!r}: {path} has label {label}, outside [0, {num_classes}) "
                    f"({len(bad)} such images); fix the list file or "
                    "config.data.num_classes")


def build_folder_task(data_config: Any, *, image_size: int, value_range: str) -> Task:
  """Builds a `Task` from image folders (`config.data.source = 'folder'`)."""
  try:
    return _build_folder_task(data_config, image_size=image_size, value_range=value_range)
  except OSError as e:   # unreadable folders or list files (permissions, I/O errors)
    where = e.filename or data_config.folder_root
    raise DataError(f"cannot read {where}: {e.strerror or e}; check the files under "
                    "config.data.folder_root") from None


def _build_folder_task(data_config: Any, *, image_size: int, value_range: str) -> Task:
  if not data_config.folder_root:
    raise ConfigError("config.data.folder_root is empty; set it to the image root (e.g. "
                      "configs/vtab.py:dtd,source=folder,root=/data/dtd)")
  method = check_resize_method(data_config.get("resize_method", "bicubic"))
  splits = split_names(data_config, f"a folder name under {data_config.folder_root}")
  names = [name for expr in splits.values() if expr for name, _, _ in parse_split(expr)]
  dataset = FolderDataset(data_config.folder_root, names)
  entries = {role: dataset.split(expr) for role, expr in splits.items() if expr}
  for role, items in entries.items():
    if not items:
      raise DataError(f"split {splits[role]!r} selects no images under {dataset.root}; "
                      f"check the slice in config.data.{role}_split")
  classes = dataset.classes
  num_classes = int(data_config.num_classes) or len(classes)
  if not num_classes:
    num_classes = 1 + max(label for items in entries.values() for _, label in items)
  if classes and data_config.num_classes and len(classes) != num_classes:
    raise DataError(f"found {len(classes)} class folders under {dataset.root} but "
                    f"config.data.num_classes={num_classes}; add the missing classes or set "
                    "config.data.num_classes=0 to use the folders")
  for role, items in entries.items():
    check_entry_labels(items, num_classes, splits[role])
  seen = set()   # make_splits decodes in-memory splits and shares repeated split strings
  for role, items in entries.items():
    if splits[role] not in seen and not held_in_memory(role, len(items)):
      check_decodable(items, splits[role])
    seen.add(splits[role])
  normalize = normalizer(value_range)
  task_name = data_config.task or dataset.root.name
  made = make_splits(
      task_name, {r: splits[r] for r in entries}, {r: len(e) for r, e in entries.items()},
      {r: make_loader(e, image_size=image_size, resize_method=method)
       for r, e in entries.items()},
      normalize, num_classes=num_classes)
  return Task(
      name=task_name, num_classes=num_classes, train=made["train"], test=made["test"],
      val=made.get("val"),
      info={"source": "folder", "folder_root": str(dataset.root), "classes": classes,
            "class_names": classes or None,
            "splits": {r: splits[r] for r in made},
            "num_examples": {r: s.num_examples for r, s in made.items()},
            "value_range": value_range, "resize_method": method})


register_source("folder", build_folder_task)
