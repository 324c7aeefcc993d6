"""TFDS datasets as numpy arrays, read through `tfds.data_source` (ArrayRecord).

Reading a prepared dataset needs no TensorFlow and never touches the network
(`download=False`); preparing one (`prepare_tfds`) downloads it and, for most image
datasets, needs TensorFlow to encode the images. tensorflow_datasets is imported lazily
inside the functions because importing it is slow.
"""
from __future__ import annotations

import difflib
import importlib
import os
import shlex
from typing import Any

import numpy as np

_TF_HINT = "pip install 'flaxnets[tfds-prepare]'   (or: pip install tensorflow importlib_resources)"
_READ_BATCH = 1024  # examples fetched per data-source call


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading TFDS datasets needs tensorflow-datasets and array_record: "
                      "pip install tensorflow-datasets array_record") from e
  return tfds


# TFDS imports the families of its older builders lazily (glue lives in `text`), and a
# builder is registered only once its module is imported: without TensorFlow nothing
# imports them, so 'glue/sst2' was "unknown" although it reads without TensorFlow.
_FAMILIES = ("audio", "graphs", "image", "image_classification", "object_detection",
             "question_answering", "structured", "summarization", "text",
             "text_simplification", "time_series", "translate", "video", "vision_language")


_families_imported: list[bool] = []


def _register_families() -> bool:
  """Import TFDS's builder families, once; True when this call imported them."""
  if _families_imported:
    return False
  _families_imported.append(True)
  for family in _FAMILIES:
    try:
      importlib.import_module(f"tensorflow_datasets.{family}")
    except Exception:  # noqa: BLE001 -- a family whose extra packages are absent
      pass
  return True


def _not_found(tfds, name: str, data_dir: str | None) -> ValueError:
  base = name.split("/")[0].split(":")[0]
  close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False),
                                    n=3)
  hint = f"; did you mean {close}?" if close else ""
  return ValueError(f"unknown TFDS dataset {name!r}: it is not registered in "
                    f"tensorflow_datasets {tfds.__version__} and no prepared copy was found "
                    f"under data_dir={data_dir!r}{hint} (names as in tfds.list_builders(), "
                    "e.g. 'mnist', 'cifar10', 'imdb_reviews')")


def _builder(tfds, name: str, data_dir: str | None):
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    if _register_families():
      return _builder(tfds, name, data_dir)
    raise _not_found(tfds, name, data_dir) from None
  except AssertionError as e:  # e.g. a version that cannot be loaded
    raise ValueError(f"TFDS dataset {name!r}: {e}") from None


def _data_source(tfds, name: str, split: str, data_dir: str | None):
  """tfds.data_source without download, with errors that say what to do."""
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    if _register_families():
      return _data_source(tfds, name, split, data_dir)
    raise _not_found(tfds, name, data_dir) from None
  # not prepared: NotImplementedError under a given data_dir; KeyError ("splits is
  # empty") when the default data_dir does not exist (tfds 4.9)
  except (NotImplementedError, FileNotFoundError, AssertionError, KeyError) as e:
    builder = _builder(tfds, name, data_dir)
    if not builder.is_prepared():
      command = f"flaxnets prepare tfds:{name}" + (
          f" --data_dir {shlex.quote(str(data_dir))}" if data_dir else "")
      raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared under {builder.data_dir}: run `{command}` "
          f"once (or flaxnets.data.tfds_source.prepare_tfds({name!r}, data_dir={data_dir!r})"
          " from Python; it downloads the data, and image datasets need TensorFlow for that "
          "step)") from None
    raise ValueError(f"TFDS dataset {name!r} at {builder.data_dir} cannot be read by "
                     f"random access: {e}") from None
  except ValueError as e:  # unknown split, bad split slice, bad config
    raise ValueError(f"TFDS dataset {name!r}, split={split!r}: {e}") from None


def _read_all(source, n: int):
  """Yields every example, reading in batches (about 2x faster than one by one)."""
  batched = True
  for start in range(0, n, _READ_BATCH):
    keys = list(range(start, min(n, start + _READ_BATCH)))
    if batched:
      try:
        yield from source.__getitems__(keys)
        continue
      except TypeError:
        if start:
          raise
        # tfds.testing.mock_data (4.9.x) installs __getitems__ as an unbound function on
        # its mock, so only item-by-item reads work under it.
        batched = False
    yield from (source[k] for k in keys)


class MissingFeatureError(ValueError):
  """The dataset has no feature of the requested name (e.g. no 'image' in a text set);
  `key`, `role` ('image_key', 'text_key' or 'label_key') and `features` say which."""

  def __init__(self, message: str, key: str = "", role: str = "",
               features: tuple[str, ...] = ()):
    super().__init__(message)
    self.key, self.role, self.features = key, role, tuple(features)


def _check_key(key: str, features: Any, name: str, role: str) -> None:
  keys = list(features.keys())
  if key not in keys:
    raise MissingFeatureError(f"TFDS dataset {name!r} has no feature {key!r} ({role}); "
                              f"its features are {keys}", key, role, keys)


def load_tfds(name: str, split: str, data_dir: str | None = None,
              image_key: str = "image", label_key: str | None = "label",
              text_key: str | None = None,
              image_size: tuple[int, int] | None = None) -> dict[str, Any]:
  """Reads one split of a prepared TFDS dataset into memory.

  image_size (height, width): every image is resized to it, as image folders are
  (bilinear); None keeps the stored size, which must then be one size.

  Returns a dict with
    'images'      uint8 [N, H, W, C] (when text_key is None), or
    'texts'       list[str] of N texts (when text_key is given, e.g. 'text');
    'labels'      int32 [N] (when label_key is not None);
    'label_names' list[str]: the ClassLabel names, or '0'..'K-1' for plain int labels;
    'split_names' list[str]: the splits the dataset has (e.g. ['train', 'test']).
  """
  tfds = _tfds()
  data_dir = None if data_dir is None else os.fspath(data_dir)
  source = _data_source(tfds, name, split, data_dir)
  features = source.dataset_info.features
  data_key = text_key if text_key is not None else image_key
  _check_key(data_key, features, name, "text_key" if text_key is not None else "image_key")
  if label_key is not None:
    _check_key(label_key, features, name, "label_key")
  n = len(source)
  if n == 0:
    raise ValueError(f"TFDS dataset {name!r} split {split!r} has no examples")

  data, labels = [], []
  for ex in _read_all(source, n):
    data.append(ex[data_key])
    if label_key is not None:
      labels.append(ex[label_key])

  out: dict[str, Any] = {"split_names": sorted(source.dataset_info.splits.keys())}
  if text_key is not None:
    out["texts"] = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in data]
  else:
    if image_size is not None:
      from PIL import Image
      from flaxnets.data.files import image_to_array
      data = [image_to_array(Image.fromarray(np.asarray(im).squeeze(-1) if np.ndim(im) == 3
                                             and np.shape(im)[-1] == 1 else np.asarray(im)),
                             image_size) for im in data]
    shape = np.shape(data[0])
    for i, im in enumerate(data):
      if np.shape(im) != shape:
        raise ValueError(f"TFDS dataset {name!r} split {split!r}: example {i} has image "
                         f"shape {np.shape(im)} but example 0 has {shape}: set "
                         "config.dataset.image_size (image_size=) to resize them to one size")
    images = np.stack(data)
    if images.ndim == 3:  # [N, H, W] -> [N, H, W, 1]
      images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"TFDS dataset {name!r} feature {image_key!r} gives {images.dtype} "
                       f"arrays of shape {images.shape[1:]}: expected uint8 images [H, W, C]")
    out["images"] = images
  if label_key is not None:
    out["labels"] = np.asarray(labels, np.int32)
    feature = features[label_key]
    names = getattr(feature, "names", None)
    if names is None:
      names = [str(i) for i in range(int(out["labels"].max()) + 1)]
    out["label_names"] = list(names)
  return out


def _missing_tensorflow(e: BaseException | None) -> bool:
  while e is not None:
    # TFDS' download path also imports importlib_resources, which it declares only for
    # Python < 3.9; the tfds-prepare extra installs both.
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in (
        "tensorflow", "importlib_resources"):
      return True
    e = e.__cause__ or e.__context__
  return False


def prepare_tfds(name: str, data_dir: str | os.PathLike | None = None) -> str:
  """Downloads and prepares a TFDS dataset as ArrayRecord files; returns its folder.

  A no-op when already prepared. Most image datasets need TensorFlow here (TFDS encodes
  the images with tf.image); without it this raises ImportError with the install command.
  """
  tfds = _tfds()
  data_dir = None if data_dir is None else os.fspath(data_dir)
  try:
    builder = _builder(tfds, name, data_dir)
    builder.download_and_prepare(file_format="array_record")
  except Exception as e:
    if _missing_tensorflow(e):
      raise ImportError(f"preparing TFDS dataset {name!r} needs TensorFlow and "
                        "importlib_resources, not both installed here (reading prepared data "
                        f"needs neither). Install them with: {_TF_HINT}") from None
    raise
  return str(builder.data_dir)
