"""Local files as numpy arrays: image folders (or tar archives of them) and text tables.

Nothing here is cached or pickled; every reader returns plain numpy arrays / lists and
raises one clear error, naming the offending path, member, column, line or label, where
bad input enters.
"""
from __future__ import annotations

import concurrent.futures
import csv
import gzip
import io
import os
import pathlib
import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from flaxnets.warn import warn

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # GIF: first frame
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")  # probing only these saves ~10% CPU per image
_GRAY_MODES = ("1", "L", "LA", "I", "F")
# Images per decode task: one task per image costs more in overhead than it gains
# (experiments/benchmarks/decode_cifar10.py). PIL releases the GIL while decoding, so
# threads pay off for photo-sized images; for tiny ones (CIFAR) they roughly break even.
_CHUNK = 64


# ----------------------------------------------------------------------------- images


def _hidden(parts: tuple[str, ...]) -> bool:
  """A hidden file or folder, or macOS resource forks, on the path."""
  return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_image(parts: tuple[str, ...]) -> bool:
  """An image file name, outside hidden folders and macOS resource forks."""
  return not _hidden(parts) and parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def image_to_array(im: Image.Image, image_size: tuple[int, int] | None) -> np.ndarray:
  """A decoded PIL image -> uint8 [H, W, 1] (grayscale) or [H, W, 3] (anything else).

  The one decoder of training (read_image_folder) and inference (Predictor): a JPEG is
  drafted (DCT-domain downscale) before the bilinear resize to image_size (height, width).
  """
  if image_size is not None and im.format == "JPEG":
    im.draft(im.mode, (image_size[1], image_size[0]))  # DCT-domain downscale, >= target size
  if im.mode.startswith("I;16"):  # 16-bit grayscale PNG: keep the 8 high bits
    im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8))
  elif im.mode in _GRAY_MODES:
    im = im.convert("L") if im.mode != "L" else im
  elif im.mode != "RGB":  # palette, RGBA (alpha dropped), CMYK, ...
    im = im.convert("RGB")
  if image_size is not None and im.size != (image_size[1], image_size[0]):
    im = im.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
  arr = np.asarray(im, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def match_channels(arr: np.ndarray, channels: int) -> np.ndarray:
  """uint8 [..., H, W, C] with `channels` channels: grayscale repeated into RGB, RGB to
  grayscale as PIL's convert('L') computes it (ITU-R 601-2 luma)."""
  if arr.shape[-1] == channels:
    return arr
  if channels == 3:
    return np.repeat(arr, 3, axis=-1)
  rgb = arr.astype(np.uint32)
  luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
  return luma.astype(np.uint8)[..., None]


def _decode_chunk(chunk: list[tuple[str, bytes | str]],
                  image_size: tuple[int, int] | None) -> list[np.ndarray]:
  """Decodes (display name, file bytes or file path) pairs; names the first bad one."""
  out = []
  for name, data in chunk:
    try:
      with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data,
                      formats=_FORMATS) as im:
        out.append(image_to_array(im, image_size))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
      raise ValueError(f"cannot decode image {name}: {type(e).__name__}: {e} "
                       "(expected a readable JPEG, PNG, BMP, GIF or WebP file)") from None
  return out


def _scan_dir(root: pathlib.Path) -> Iterator[tuple[tuple[str, ...], str, str]]:
  """Yields (relative path parts, display name, file path) for each image under root."""
  # The real folders on each walked folder's path: a link back to one of them is a loop,
  # which os.walk had followed until the path was too long. Other links (even to a
  # sibling class) are followed.
  chains = {str(root): {os.path.realpath(root)}}
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    chain = chains.pop(dirpath, set())
    kept = []
    for d in sorted(dirnames):
      real = os.path.realpath(os.path.join(dirpath, d))
      if real not in chain:
        kept.append(d)
        chains[os.path.join(dirpath, d)] = chain | {real}
    dirnames[:] = kept
    rel = pathlib.Path(dirpath).relative_to(root).parts
    for fn in sorted(filenames):
      if _is_image(rel + (fn,)):
        full = os.path.join(dirpath, fn)
        yield rel + (fn,), full, full


def _member_parts(name: str) -> tuple[str, ...]:
  return tuple(p for p in name.split("/") if p not in ("", "."))


def _scan_tar(archive: pathlib.Path) -> Iterator[tuple[tuple[str, ...], str, bytes]]:
  """Streams (member path parts, display name, member bytes) for each image member.

  Hard links and symlinks to images (as `cp -al` or dedup tools leave) are images too,
  and a symlink to a folder holds the images under its target, as the directory reader
  follows it: targets are read in a second pass, since a streamed archive cannot go back.
  """
  links: dict[tuple[str, ...], tuple[str, ...]] = {}  # link -> the member it names
  folder_links: dict[tuple[str, ...], tuple[str, ...]] = {}  # other links: maybe folders
  try:
    with tarfile.open(archive, "r|*") as tf:
      for member in tf:
        parts = _member_parts(member.name)
        if not parts:
          continue
        if member.islnk():  # linkname: a path from the archive's top
          target = _member_parts(member.linkname)
        elif member.issym():  # linkname: relative to the link's folder
          target = _member_parts(posixpath.normpath(posixpath.join(
              "/".join(parts[:-1]), member.linkname)))
        if not _is_image(parts):
          if member.issym() and not _hidden(parts):
            folder_links[parts] = target  # a link to a folder had dropped its class unsaid
          continue
        if member.isfile():
          yield parts, f"{member.name!r} in {archive}", tf.extractfile(member).read()
        elif member.islnk() or member.issym():
          links[parts] = target
    if links or folder_links:
      yield from _scan_tar_links(archive, links, folder_links)
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f"cannot read archive {archive}: {type(e).__name__}: {e} "
                     f"(expected a {'/'.join(ARCHIVE_SUFFIXES)} archive)") from None


def _scan_tar_links(archive: pathlib.Path, links: dict[tuple[str, ...], tuple[str, ...]],
                    folder_links: dict[tuple[str, ...], tuple[str, ...]] | None = None
                    ) -> Iterator[tuple[tuple[str, ...], str, bytes]]:
  """The images that link members name, and those under linked folders (at the link's
  path, as the directory reader sees them), read in one more pass over the archive.

  A link that names no member of the archive, and has no file suffix (a folder link out
  of the archive, whose images it does not hold), is warned about; other links to
  non-images are skipped, as other files are.
  """
  folders: dict[tuple[str, ...], tuple[str, ...]] = {}
  for link, target in (folder_links or {}).items():
    for _ in range(8):  # a link to a folder link
      target = (folder_links or {}).get(target, target)
    if target and target != link[:len(target)]:  # a link into itself is a loop: skipped
      folders[link] = target
  for link, target in list(links.items()):  # image links inside a linked folder
    for folder, t in folders.items():
      if link[:len(t)] == t:
        links.setdefault(folder + link[len(t):], target)
  wanted: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
  for link, target in links.items():
    for _ in range(8):  # a link to a link (a cycle stays a link: reported missing below)
      target = links.get(target, target)
    wanted.setdefault(target, []).append(link)
  found, named = set(), set()  # images read; folder links with a member under them
  with tarfile.open(archive, "r|*") as tf:
    for member in tf:
      target = _member_parts(member.name)
      under = []
      for folder, t in folders.items():
        if target[:len(t)] == t:
          named.add(folder)
          if len(target) > len(t) and _is_image(folder + target[len(t):]):
            under.append(folder + target[len(t):])
      if not member.isfile() or (target not in wanted and not under):
        continue
      data = tf.extractfile(member).read()
      found.add(target)
      for link in wanted.get(target, []):
        yield link, f"{'/'.join(link)!r} in {archive} (a link to {member.name!r})", data
      for path in under:
        yield path, f"{'/'.join(path)!r} in {archive} (in a linked folder: {member.name!r})", data
  missing = [(link, target) for target, ls in wanted.items() if target not in found
             for link in ls]
  if missing:
    link, target = missing[0]
    raise ValueError(f"archive {archive}: {len(missing)} link member(s) name no file in it, "
                     f"e.g. {'/'.join(link)!r} -> {'/'.join(target)!r}: expected links to "
                     "images inside the archive")
  outside = [(link, target) for link, target in folders.items()
             if link not in named and not posixpath.splitext(link[-1])[1]]
  if outside:
    link, target = outside[0]
    warn(f"archive {archive}: {len(outside)} link member(s) name nothing inside it, "
         f"e.g. {'/'.join(link)!r} -> {'/'.join(target)!r}, so any images behind "
         "them are not read (`tar -h` stores what links point to)")


def archive_split_folders(archive: str | os.PathLike) -> set[str]:
  """Top-level folders of an archive that hold `<class>/<image>` trees (its splits).

  Lists member names only (no image is decoded); empty when the class folders sit at
  the archive's top.
  """
  try:
    with tarfile.open(archive, "r|*") as tf:
      return {parts[0] for parts in (
          _member_parts(m.name) for m in tf if m.isfile() or m.islnk() or m.issym())
              if len(parts) >= 3 and _is_image(parts)}
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f"cannot read archive {archive}: {type(e).__name__}: {e} "
                     f"(expected a {'/'.join(ARCHIVE_SUFFIXES)} archive)") from None


class _Layout:
  """Picks the images of `[<split>/][<prefix>/]<class>/<file>` and checks the layout."""

  def __init__(self, path: pathlib.Path, split: str | None, split_parts: tuple[str, ...]):
    self.path, self.split, self.split_parts = path, split, split_parts
    self.top_level: set[str] = set()  # first folders of images nested >= 3 deep
    self.prefixes: dict[str, str] = {}  # folders holding the class folders: an image in each
    self.loose = 0                    # images outside any class folder
    self.count = 0

  def select(self, entries: Iterable) -> Iterator[tuple[str, str, str, bytes | str]]:
    """(parts, name, data) -> (class, relative path, name, data) of the kept images."""
    n = len(self.split_parts)
    for parts, name, data in entries:
      if len(parts) >= 3:
        self.top_level.add(parts[0])
      if n:
        if parts[:n] != self.split_parts:
          continue
        parts = parts[n:]
      if len(parts) < 2:
        self.loose += 1
        continue
      prefix = "/".join(parts[:-2])
      if prefix not in self.prefixes:
        self.prefixes[prefix] = "/".join(parts)
        if len(self.prefixes) > 1:
          self.check()  # fail early while streaming an archive
      self.count += 1
      yield parts[-2], "/".join(parts), name, data

  def check(self) -> None:
    """Raises if no images were found, the split is missing, or class levels differ."""
    path, split = self.path, self.split
    if not self.count:
      if self.split_parts and self.split_parts[0] not in self.top_level:
        found = (sorted(self.top_level) or
                 "none (images sit directly in class folders; use split=None)")
        raise ValueError(f"split {split!r} not found in {path}: expected images under "
                         f"{split}/<class>/; top-level folders with images: {found}")
      where = f"{path} (split {split!r})" if split else str(path)
      hint = (f"; {self.loose} image(s) lie directly in it: expected "
              "<folder>/<class>/<image>" if self.loose else "")
      raise ValueError(f"no images found in {where}: looked for "
                       f"{'/'.join(IMAGE_EXTENSIONS)} files (case-insensitive) in class "
                       f"subfolders{hint}")
    if len(self.prefixes) > 1:
      shown = ", ".join(repr(self.prefixes[p]) for p in sorted(self.prefixes)[:4])
      where = f"{path}{f' (split {split!r})' if split else ''}"
      tops = sorted(self.top_level)
      hint = (f"; a dataset with splits takes one of its top-level folders {tops} as "
              "config.dataset.train_split (split=)" if len(tops) > 1 else "")
      raise ValueError(f"{where}: class folders sit under different parent folders, e.g. "
                       f"{shown}: expected <class>/<image>, each image directly in its class "
                       f"folder{hint}")


def _warn_empty_classes(parent: pathlib.Path, class_names: list[str]) -> None:
  """Warn about class folders beside the found ones that hold no images (Keras would
  count them as classes; here a class is a folder with at least one image)."""
  empty = sorted(d.name for d in parent.iterdir()
                 if d.is_dir() and not _hidden((d.name,)) and d.name not in class_names)
  if empty:
    warn(f"{parent}: class folder(s) {empty} hold no {'/'.join(IMAGE_EXTENSIONS)} "
         f"images, so they are not classes of this dataset; its {len(class_names)} "
         f"classes are {class_names[:10]}{' ...' if len(class_names) > 10 else ''}")


def _check_image_size(image_size) -> tuple[int, int] | None:
  if image_size is None:
    return None
  if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2 or
      not all(isinstance(s, (int, np.integer)) and s > 0 for s in image_size)):
    raise ValueError(f"image_size={image_size!r}: expected None or (height, width), "
                     "two positive ints")
  return int(image_size[0]), int(image_size[1])


def read_image_folder(path: str | os.PathLike,
                      split: str | None = None,
                      image_size: tuple[int, int] | None = None,
                      num_workers: int | None = None,
                      *,
                      class_names: Sequence[str] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Reads `<path>/[<prefix>/]<class>/<image>` from a directory or a tar archive.

  Args:
    path: a directory, or a .tar/.tar.gz/.tgz archive (streamed, never unpacked).
    split: keep only images under this top-level folder (e.g. 'train').
    image_size: (height, width) to resize every image to; None = all must match.
    num_workers: decoding threads; None = min(8, cpu count); <= 1 decodes inline.
    class_names: the label order to use (e.g. from the train split), so that a split
      missing a class keeps the same ids; None = sorted class folders found.

  Returns:
    images uint8 [N, H, W, C] (C = 1 if every image is grayscale, else 3), labels
    int32 [N], class_names. A class is the image's parent folder; images are sorted by
    (class, file). Files other than .jpg/.jpeg/.png/.bmp/.gif/.webp, hidden files and
    images lying outside a class folder are ignored; alpha channels are dropped.
  """
  path = pathlib.Path(path)
  image_size = _check_image_size(image_size)
  if num_workers is None:
    num_workers = min(8, os.cpu_count() or 1)
  if not path.exists():
    raise FileNotFoundError(f"image folder {str(path)!r} does not exist: expected a directory "
                            "with one subfolder per class, or a .tar/.tar.gz/.tgz archive")
  if path.is_dir():
    entries: Iterable = _scan_dir(path)
  elif path.name.lower().endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(path):
    entries = _scan_tar(path)
  else:
    raise ValueError(f"image folder {str(path)!r} is a file but not a tar archive: expected a "
                     f"directory or a {'/'.join(ARCHIVE_SUFFIXES)} archive")

  split_parts = tuple(p for p in split.split("/") if p) if split else ()
  if split is not None and not split_parts:
    raise ValueError(f"split={split!r}: expected a folder name such as 'train', or None")
  layout = _Layout(path, split, split_parts)
  selected = layout.select(entries)
  if path.is_dir():  # listing is cheap: check the layout before decoding anything
    selected = list(selected)
    layout.check()
  keys: list[tuple[str, str]] = []  # (class, relpath) per kept image
  names: list[str] = []
  futures, chunk = [], []
  pool = (concurrent.futures.ThreadPoolExecutor(num_workers, "read_image_folder")
          if num_workers > 1 else None)
  results: list[np.ndarray] = []

  def flush():
    if chunk:
      if pool is None:
        results.extend(_decode_chunk(chunk, image_size))
      else:
        futures.append(pool.submit(_decode_chunk, list(chunk), image_size))
      chunk.clear()

  try:
    for cls, rel, name, data in selected:
      keys.append((cls, rel))
      names.append(name)
      chunk.append((name, data))
      if len(chunk) >= _CHUNK:
        flush()
    flush()
    for f in futures:
      results.extend(f.result())
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
  layout.check()

  found_classes = sorted({k[0] for k in keys})
  if class_names is None:
    class_names = found_classes
    if path.is_dir():
      _warn_empty_classes(path.joinpath(*split_parts, *next(iter(layout.prefixes)).split("/")),
                          class_names)
  else:
    class_names = list(class_names)
    for c in found_classes:
      if c not in class_names:
        raise ValueError(f"{path}: class folder {c!r} is not among class_names={class_names}")
  class_index = {c: i for i, c in enumerate(class_names)}
  order = sorted(range(len(keys)), key=lambda i: (class_index[keys[i][0]], keys[i][1]))
  first = order[0]
  want_hw = image_size or results[first].shape[:2]
  for i in order:
    if results[i].shape[:2] != want_hw:
      h, w = results[i].shape[:2]
      raise ValueError(f"image {names[i]} is {h}x{w} (height x width) but {names[first]} is "
                       f"{want_hw[0]}x{want_hw[1]}: all images must share a size; pass "
                       "image_size=(height, width) to resize them")
  channels = 3 if any(r.shape[2] == 3 for r in results) else 1
  images = np.empty((len(order), *want_hw, channels), np.uint8)
  for j, i in enumerate(order):
    images[j] = results[i]  # broadcasts a grayscale [H, W, 1] image into RGB
  labels = np.array([class_index[keys[i][0]] for i in order], np.int32)
  return images, labels, class_names


# ----------------------------------------------------------------------------- text tables


def _open_text(path: pathlib.Path):
  if path.name.lower().endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
  return open(path, encoding="utf-8-sig", newline="")


def _column_index(column: str | int, header: list[str] | None, ncols: int,
                  path: pathlib.Path, role: str) -> int:
  """Resolves a column name or index against the header; names what was found."""
  if isinstance(column, str):
    if header is None:
      raise ValueError(f"{role}={column!r}: {path} is read with header=False, so columns "
                       f"must be given by index (0..{ncols - 1})")
    if column not in header:
      raise ValueError(f"{path}: no column {column!r} (the {role}); columns found: {header}")
    return header.index(column)
  if isinstance(column, (int, np.integer)) and not isinstance(column, bool):
    if not 0 <= column < ncols:
      raise ValueError(f"{role}={column}: {path} has {ncols} columns, expected 0..{ncols - 1}")
    return int(column)
  raise TypeError(f"{role}={column!r}: expected a column name (str) or index (int)")


def read_text_table(path: str | os.PathLike,
                    text_column: str | int = "sentence",
                    label_column: str | int | None = "label",
                    delimiter: str | None = None,
                    header: bool = True, *, lines: list[int] | None = None,
                    ) -> tuple[list[str], list[str]]:
  """Reads a TSV/CSV table (optionally .gz) into (texts [N], raw label strings [N]).

  `lines`, a list, receives each row's line number in the file (for error messages).

  The delimiter defaults from the suffix: TAB for .tsv[.gz], ',' for .csv[.gz]. TAB-
  separated files are read without quote handling (texts contain quote characters);
  others with normal CSV quoting. Blank (or whitespace-only) lines are skipped.
  label_column=None returns an empty label list (unlabelled text, e.g. for prediction).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"text table {str(path)!r} does not exist (or is not a file)")
  if delimiter is None:
    stem = path.name.lower().removesuffix(".gz")
    if stem.endswith(".tsv"):
      delimiter = "\t"
    elif stem.endswith(".csv"):
      delimiter = ","
    else:
      raise ValueError(f"cannot tell the delimiter of {path} from its suffix (expected .tsv, "
                       ".csv, .tsv.gz or .csv.gz): pass delimiter='\\t' or ','")
  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
  # csv's default limit (131,072 characters a field) had refused long documents as
  # "malformed"; config.dataset.max_len truncates them after tokenizing anyway.
  csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
  texts, labels = [], []
  reader = None
  try:
    with _open_text(path) as f:
      reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
      # skip blank lines, whitespace-only ones too (a row of one empty-looking field)
      rows = (row for row in reader if row and not (len(row) == 1 and not row[0].strip()))
      first = next(rows, None)
      if first is None:
        raise ValueError(f"{path} is empty: expected a "
                         f"{'header line and ' if header else ''}data rows")
      names = first if header else None
      ncols = len(first)
      t = _column_index(text_column, names, ncols, path, "text_column")
      lab = (None if label_column is None else
             _column_index(label_column, names, ncols, path, "label_column"))
      line_of = lines.append if lines is not None else (lambda _: None)
      if not header:
        texts.append(first[t])
        labels.extend([first[lab]] if lab is not None else [])
        line_of(reader.line_num)
      for row in rows:
        if len(row) != ncols:
          what = "header" if header else "first row"
          raise ValueError(f"{path}: line {reader.line_num} has {len(row)} fields, expected "
                           f"{ncols} like the {what} ({delimiter!r}-separated)")
        texts.append(row[t])
        line_of(reader.line_num)
        if lab is not None:
          labels.append(row[lab])
  except csv.Error as e:
    line = reader.line_num if reader is not None else 1
    raise ValueError(f"{path}: line {line}: malformed {delimiter!r}-separated row: {e}") \
        from None
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text ({e}): expected a UTF-8 encoded table") \
        from None
  except (gzip.BadGzipFile, EOFError) as e:
    raise ValueError(f"{path} is not a valid gzip file: {e}") from None
  if not texts:
    raise ValueError(f"{path} has a header but no data rows: expected at least one example")
  if not any(x.strip() for x in texts):
    raise ValueError(f"{path}: the text column {text_column!r} is empty in all {len(texts)} "
                     f"rows{f'; columns found: {names}' if names else ''}: set "
                     "config.dataset.text_column to the column that holds the texts")
  return texts, labels


def _label_sort_key(names: set[str]):
  """Numeric order when every label is an integer string ('2' < '10'), else text order."""
  if all(re.fullmatch(r"[+-]?\d+", s) for s in names):
    return lambda s: (int(s), s)
  return None




def _warn_look_alike_labels(names: Sequence[str]) -> None:
  """Labels that read as one number ('1', '1.0', '01') or as pandas' missing value ('NaN')
  had each become a class of their own without a word."""
  by_value: dict[float, list[str]] = {}
  for name in names:
    try:
      value = float(name)
    except ValueError:
      continue
    if value == value:  # not NaN
      by_value.setdefault(value, []).append(name)
  same = [group for group in by_value.values() if len(group) > 1]
  if same:
    warn(f"labels {same[0]} read as the same number but are {len(same[0])} different "
         "classes (labels are compared as text); write each class one way")
  missing = [n for n in names if n.lower() == "nan"]  # as pandas writes a missing value
  if missing:
    warn(f"label {missing[0]!r} looks like a missing value (pandas writes those as NaN) but "
         "is a class of its own; drop those rows, or give them their label")


def encode_labels(raw_labels: Sequence[str],
                  label_names: Sequence[str] | None = None,
                  where: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
  """Maps raw label strings to int32 ids [N].

  `where[i]` names where label i came from (e.g. 'dev.tsv: line 4') in errors; by
  default its index.

  With label_names=None the names are built from these (training) labels: sorted,
  numerically when all are integer strings, so '0', '1', ... map to 0, 1, ...
  Otherwise every label must be one of label_names, which fixes the id order.
  """
  raw = [str(x) if isinstance(x, (int, np.integer)) else x for x in raw_labels]
  for i, x in enumerate(raw):
    if not isinstance(x, str):
      raise TypeError(f"label {x!r} at index {i}: expected a string")
  raw = [x.strip() for x in raw]  # 'pos' and ' pos' (CSV spacing) are one class
  def at(i: int) -> str:
    return f"at {where[i]}" if where is not None else f"at index {i}"

  for i, x in enumerate(raw):
    if x == "":
      raise ValueError(f"label {at(i)} is empty: expected a label value")
  if label_names is None:
    if not raw:
      raise ValueError("encode_labels: no labels given to build the label names from")
    unique = set(raw)
    label_names = sorted(unique, key=_label_sort_key(unique))
    _warn_look_alike_labels(label_names)
  else:
    label_names = list(label_names)
    if not label_names or len(set(label_names)) != len(label_names):
      raise ValueError(f"label_names={label_names}: expected a non-empty list without "
                       "duplicates")
  index = {name: i for i, name in enumerate(label_names)}
  ids = np.empty(len(raw), np.int32)
  for i, x in enumerate(raw):
    if x not in index:
      raise ValueError(f"unknown label {x!r} {at(i)}: expected one of {label_names}")
    ids[i] = index[x]
  return ids, label_names
