"""Dataset builders for files and TFDS: image folders, text tables, text corpora.

Each turns config.dataset into a Dataset of numpy splits. Vocabularies and label
names come from the training split only; other splits are encoded with them.
"""
from __future__ import annotations

import gzip
import json
import pathlib
from typing import Any

import numpy as np

from flaxnets.data import files, sources
from flaxnets.data.text import PAD, UNK, Vocabulary, lm_eval_windows, lm_windows
from flaxnets.data.types import Dataset
from flaxnets.warn import warn

_TABLE_SUFFIXES = (".tsv", ".tsv.gz", ".csv", ".csv.gz")
_ARCHIVE_SUFFIXES = files.ARCHIVE_SUFFIXES
_VAL_NAMES = ("val", "validation", "dev", "valid")  # split names a user may mean as validation


def _path(dcfg: Any) -> pathlib.Path:
  if not dcfg.path:
    raise ValueError(f"config.dataset.path='' : dataset {dcfg.name!r} needs a file or folder")
  path = pathlib.Path(dcfg.path).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"config.dataset.path={dcfg.path!r} does not exist")
  return path


# ---- images ----------------------------------------------------------------------------
def _read_images(path: pathlib.Path, split: str, image_size, class_names=None):
  """A split of an image dataset laid out as <path>/<split>/ or <path>/<split>.tar.gz.

  With class_names (a split read after train): converted to the train split's
  channels, as the Predictor converts an image file.
  """
  got = None
  if path.is_dir():
    if (path / split).is_dir():
      got = files.read_image_folder(path / split, image_size=image_size,
                                    class_names=class_names)
    for suffix in _ARCHIVE_SUFFIXES if got is None else ():
      archive = path / f"{split}{suffix}"
      if archive.is_file():
        # train.tar.gz holds train/<class>/... or, made with `tar -C train .`, <class>/...
        inner = split if _top_folder(split) in _archive_splits(archive) else None
        got = files.read_image_folder(archive, split=inner, image_size=image_size,
                                      class_names=class_names)
        break
  elif _top_folder(split) in _archive_splits(path):
    got = files.read_image_folder(path, split=split, image_size=image_size,
                                  class_names=class_names)
  return got


def _archive_splits(path: pathlib.Path) -> set[str]:
  """The split folders of one archive given as dataset.path (listed once per file state)."""
  stat = path.stat()
  key = (str(path.absolute()), stat.st_mtime_ns, stat.st_size)
  if key not in _ARCHIVE_SPLITS:
    _ARCHIVE_SPLITS[key] = files.archive_split_folders(path)
  return _ARCHIVE_SPLITS[key]


_ARCHIVE_SPLITS: dict[tuple, set[str]] = {}


def _top_folder(split: str) -> str:
  """The archive's top-level folder a split lives under ('x' for 'x/train')."""
  return next((p for p in split.split("/") if p not in ("", ".")), split)


def _like_train(got, train_x: np.ndarray):
  """A val/test split's images with the train split's channel count."""
  if got is None:
    return None
  x, y, names = got
  return files.match_channels(x, train_x.shape[-1]), y, names


def image_folder_dataset(dcfg: Any) -> Dataset:
  path = _path(dcfg)
  size = (dcfg.image_size, dcfg.image_size) if dcfg.image_size else None
  if path.is_dir():
    flat = not (path / dcfg.train_split).exists() and not any(
        (path / f"{dcfg.train_split}{s}").exists() for s in _ARCHIVE_SUFFIXES)
  else:  # one archive: splits are its top-level folders, if it has any
    splits = _archive_splits(path)
    flat = not splits
    if splits and _top_folder(dcfg.train_split) not in splits:
      raise ValueError(f"config.dataset.train_split={dcfg.train_split!r}: not found in "
                       f"{str(path)!r}; its split folders are {sorted(splits)}")
  if flat:  # class folders at the top: validation is carved from them, no test split
    for key in ("test_split", "val_split"):
      if dcfg[key] and dcfg[key] != "test":  # a named split must exist
        raise ValueError(f"config.dataset.{key}={dcfg[key]!r}: {str(path)!r} holds class "
                         f"folders, not split folders ({dcfg.train_split}/, {dcfg[key]}/)")
    x, y, names = files.read_image_folder(path, image_size=size)
    train, test = {"inputs": x, "labels": y}, None
  else:
    x, y, names = _read_images(path, dcfg.train_split, size)
    train = {"inputs": x, "labels": y}
    test = None
    size = size or x.shape[1:3]  # other splits are read at the train split's size
    if dcfg.test_split:
      got = _like_train(_read_images(path, dcfg.test_split, size, names), x)
      if got is None and dcfg.test_split != "test":  # a named split must exist
        raise ValueError(f"config.dataset.test_split={dcfg.test_split!r}: not found in "
                         f"{str(path)!r}")
      test = None if got is None else {"inputs": got[0], "labels": got[1]}
  val = None
  if dcfg.val_split:
    got = _like_train(_read_images(path, dcfg.val_split, size, names), train["inputs"])
    if got is None:
      raise ValueError(f"config.dataset.val_split={dcfg.val_split!r}: not found in {str(path)!r}")
    val = {"inputs": got[0], "labels": got[1]}
  else:
    if not flat:
      _warn_unused_val(path, [v for v in _VAL_NAMES if (
          any((path / f"{v}{x}").exists() for x in ("",) + _ARCHIVE_SUFFIXES)
          if path.is_dir() else v in _archive_splits(path))], dcfg)
    train, val = sources.carve_validation(train, dcfg.val_fraction)
  return Dataset(train=train, val=val, test=test, num_classes=len(names), label_names=names,
                 input_kind="image", name=path.name)


def _warn_unused_val(path: pathlib.Path, found: list[str], dcfg: Any) -> None:
  """A validation split beside train that config.dataset.val_split leaves unread."""
  if found:
    warn(f"{str(path)!r} has a {found[0]!r} split, but config.dataset.val_split='' "
         f"holds out {dcfg.val_fraction:g} of train for validation instead; set "
         f"config.dataset.val_split={found[0]!r} to validate on it")


# ---- text tables -------------------------------------------------------------------------
def _table_file(path: pathlib.Path, split: str) -> pathlib.Path | None:
  if path.is_file():
    return path if split == "train" else None
  for suffix in _TABLE_SUFFIXES:
    if (path / f"{split}{suffix}").is_file():
      return path / f"{split}{suffix}"
  return None


def text_table_dataset(dcfg: Any, vocab: Vocabulary | None = None) -> Dataset:
  """TSV/CSV with label and text columns; word or char vocabulary from train."""
  path = _path(dcfg)
  train_file = _table_file(path, dcfg.train_split)
  if train_file is None:
    raise FileNotFoundError(f"config.dataset.train_split={dcfg.train_split!r}: no "
                            f"{dcfg.train_split}{{{','.join(_TABLE_SUFFIXES)}}} in {str(path)!r}")
  texts, raw, where = _read_table(train_file, dcfg)
  labels, names = files.encode_labels(raw, where=where)
  if len(names) > 20 and len(names) > len(labels) / 2:  # a score or id column, not classes
    warn(f"{train_file}: the label column {dcfg.label_column!r} holds {len(names)} "
         f"distinct values in {len(labels)} rows (e.g. {names[:5]}); each is a class. "
         "Is it a score or an id? Set config.dataset.label_column to the class "
         "column")
  splits = {"train": {"texts": np.array(texts, dtype=object), "labels": labels}}
  for role in ("val", "test"):
    split = dcfg[f"{role}_split"]
    if not split:
      if role == "val" and path.is_dir():
        _warn_unused_val(path, [v for v in _VAL_NAMES if _table_file(path, v)], dcfg)
      continue
    f = _table_file(path, split)
    if f is None:
      if role == "val":
        raise FileNotFoundError(f"config.dataset.val_split={split!r}: no {split}"
                                f"{{{','.join(_TABLE_SUFFIXES)}}} in {str(path)!r}")
      if split != "test":  # a named split must exist; the default may be absent
        raise FileNotFoundError(f"config.dataset.test_split={split!r}: no {split}"
                                f"{{{','.join(_TABLE_SUFFIXES)}}} in {str(path)!r}")
      continue  # no test table: report validation only
    t, r, where = _read_table(f, dcfg)
    splits[role] = {"texts": np.array(t, dtype=object),
                    "labels": files.encode_labels(r, names, where)[0]}
  vocab, splits = _encode_texts(dcfg, splits, vocab)
  return Dataset(train=splits["train"], val=splits.get("val"), test=splits.get("test"),
                 num_classes=len(names), label_names=names, input_kind="tokens", vocab=vocab,
                 name=path.name)


def _read_table(f: pathlib.Path, dcfg: Any) -> tuple[list[str], list[str], list[str]]:
  """(texts, raw labels, 'file: line N' of each row)."""
  lines: list[int] = []
  texts, raw = files.read_text_table(f, dcfg.text_column, dcfg.label_column, lines=lines)
  return texts, raw, [f"{f}: line {n}" for n in lines]


def _encode_texts(dcfg: Any, splits: dict[str, dict], vocab: Vocabulary | None = None
                  ) -> tuple[Vocabulary, dict[str, dict]]:
  """{'texts', 'labels'} splits -> (vocabulary, token splits). Validation is carved out of
  train (when no val split is given) before the vocabulary and max_len are taken from
  train, so no word or length seen only in validation shapes them."""
  if "val" not in splits:
    splits["train"], val = sources.carve_validation(splits["train"], dcfg.val_fraction)
    if val is not None:
      splits["val"] = val
  texts = list(splits["train"]["texts"])
  if vocab is None:  # (evaluate passes the checkpoint's)
    vocab = given_vocabulary(dcfg)
  if vocab is None:
    vocab = Vocabulary.build(texts, level=dcfg.vocab_level, lowercase=dcfg.lowercase,
                             min_freq=dcfg.min_freq, max_size=dcfg.max_vocab or None,
                             split_punctuation=dcfg.split_punctuation)
  max_len = dcfg.max_len or max(len(vocab.tokenize(t)) for t in texts)
  out = {}
  for role, split in splits.items():
    ids, lengths = vocab.encode(list(split["texts"]), max_len)
    out[role] = {"inputs": ids, "labels": split["labels"], "seq_lengths": lengths}
  return vocab, out


def given_vocabulary(dcfg: Any) -> Vocabulary | None:
  """config.dataset.vocabulary's vocabulary, or None to build one from the training split.

  A run's workdir gives its checkpoint's vocabulary (its best step's, else its latest's), a
  .json file a saved Vocabulary (or the "vocab" of an export's .json), any other file one
  token a line tokenized by config.dataset's rules. The first two carry the tokenizer
  rules their model trained with: config.dataset's must be the same (a ConfigError names
  the one that differs), so the recorded config says how the texts were split."""
  spec = dcfg.get("vocabulary", "")  # (a checkpoint's config from before 2026-11-30 lacks it)
  if not spec:
    return None
  where = f"config.dataset.vocabulary={spec!r}"
  path = pathlib.Path(spec).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"{where} does not exist; expected a run's workdir, a vocabulary "
                            ".json file or a file of one token a line")
  try:
    if path.is_dir():
      vocab = _run_vocabulary(path)
    elif path.name.lower().endswith(".json"):
      vocab = Vocabulary.load(path)
    else:
      vocab = Vocabulary.from_token_file(path, dcfg.vocab_level, dcfg.lowercase,
                                         dcfg.split_punctuation)
      never = vocab.unreachable()
      if never:
        warn(f"{where}: {len(never)} of its {len(vocab) - 2} tokens are never produced by "
             f"config.dataset's tokenizer (lowercase={dcfg.lowercase}, split_punctuation="
             f"{dcfg.split_punctuation}), e.g. {never[:3]} becomes "
             f"{vocab.tokenize(never[0])}, so they never match")
      return vocab
  except FileNotFoundError as e:  # a workdir without checkpoints
    raise FileNotFoundError(f"{where}: {e}") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None
  if len(vocab) <= 2:
    raise ValueError(f"{where}: it holds no tokens but {PAD!r} and {UNK!r}; expected some")
  from flaxnets.config import ConfigError
  rules = {"vocab_level": vocab.level, "lowercase": vocab.lowercase}
  if vocab.level == "word":
    rules["split_punctuation"] = vocab.split_punctuation
  for key, value in rules.items():
    if dcfg[key] != value:
      raise ConfigError(f"config.dataset.{key}={dcfg[key]!r}: the vocabulary of {where} was "
                        f"built with {key}={value!r}, and its tokens are what that splitting "
                        f"gives; expected {key}={value!r}")
  return vocab


def _run_vocabulary(workdir: pathlib.Path) -> Vocabulary:
  """A run's vocabulary, from the metadata of its best step (else its latest): a step
  that is damaged, or pruned by the still-training run while it is read, gives way to
  the same step's copy in the other folder, then to the newest step (every step of a run
  holds the same vocabulary)."""
  from flaxnets.inference import _step_dir
  first = _step_dir(workdir, "best")
  other = workdir / ("checkpoints" if first.parent.name == "best" else "best") / first.name
  errors = []
  for attempt in (first, other, "latest"):
    step_dir = attempt
    try:
      step_dir = _step_dir(workdir, attempt) if isinstance(attempt, str) else attempt
      meta = json.loads((step_dir / "meta" / "metadata").read_text("utf-8"))
      if not (isinstance(meta, dict) and "vocab" in meta and not meta["vocab"]):
        return Vocabulary.from_dict(meta["vocab"])
    except (OSError, ValueError, TypeError, KeyError) as e:  # damaged, or pruned meanwhile
      errors.append(f"{str(step_dir)!r}: {e!r}")
      continue
    raise ValueError(f"the run in it trained on {meta.get('input_kind') or 'no text'} "
                     "inputs, with no vocabulary; expected a text model's run")
  raise ValueError(f"no step of it could be read ({'; '.join(errors)})")


# ---- text corpora (language models) -------------------------------------------------------
def text_file_dataset(dcfg: Any, vocab: Vocabulary | None = None) -> Dataset:
  """A plain-text corpus for next-token prediction: the last val_fraction is validation."""
  path = _path(dcfg)
  if not path.is_file():
    raise ValueError(f"config.dataset.path={dcfg.path!r}: expected a text file")
  try:  # utf-8-sig: a byte-order mark is not text; .gz corpora are read decompressed
    if path.name.lower().endswith(".gz"):
      with gzip.open(path, "rt", encoding="utf-8-sig") as f:
        text = f.read()
    else:
      text = path.read_text(encoding="utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(f"text file {str(path)!r} is not UTF-8 text ({e}): expected a UTF-8 "
                     "encoded corpus (plain, or .gz)") from None
  except (gzip.BadGzipFile, EOFError) as e:
    raise ValueError(f"text file {str(path)!r} is not a valid gzip file: {e}") from None
  if not text:
    raise ValueError(f"text file {str(path)!r} is empty")
  cut = int(len(text) * (1.0 - dcfg.val_fraction))
  if dcfg.vocab_level == "word":  # on a word boundary: a split word had become two tokens
    while cut < len(text) and not text[cut].isspace():
      cut += 1
  if vocab is None:
    vocab = given_vocabulary(dcfg)
  if vocab is None:
    vocab = Vocabulary.build([text[:cut]], level=dcfg.vocab_level, lowercase=dcfg.lowercase,
                             min_freq=dcfg.min_freq, max_size=dcfg.max_vocab or None,
                             split_punctuation=dcfg.split_punctuation)

  def windows(part: str, what: str) -> dict[str, np.ndarray]:
    ids = vocab.token_ids(part)
    val = what.startswith("validation")
    try:
      if not val:  # training windows overlap by half: each position seen with two contexts
        x, y = lm_windows(ids, dcfg.seq_len, dcfg.seq_len // 2)
        return {"inputs": x, "labels": y}
      # Every validation target once, the tail in a padded window: dropping it had left
      # up to seq_len - 1 tokens (14% of a small split) unscored.
      x, y, lengths = lm_eval_windows(ids, dcfg.seq_len)
    except ValueError as e:
      raise ValueError(f"text file {str(path)!r}: its {what} is too short"
                       f"{'' if val else f' for config.dataset.seq_len={dcfg.seq_len}'} "
                       f"({e}); use a {'larger val_fraction' if val else 'shorter seq_len'}"
                       ) from None
    return {"inputs": x, "labels": y, **({} if lengths is None else {"seq_lengths": lengths})}

  train = windows(text[:cut], f"training part (the first {1 - dcfg.val_fraction:.0%})")
  val = (windows(text[cut:], f"validation part (the last {dcfg.val_fraction:.0%}, "
                 "val_fraction)") if dcfg.val_fraction > 0 else None)
  return Dataset(train=train, val=val, test=None, num_classes=len(vocab),
                 label_names=list(vocab.tokens), input_kind="tokens", vocab=vocab, task="lm",
                 name=path.name)


# ---- TFDS -------------------------------------------------------------------------------
def tfds_dataset(dcfg: Any, vocab: Vocabulary | None = None) -> Dataset:
  """`tfds:<name>[:<version>]` through tfds.data_source (prepared ArrayRecord files)."""
  from flaxnets.data import tfds_source
  name = dcfg.name[len("tfds:"):]
  data_dir = dcfg.data_dir or None

  size = (dcfg.image_size, dcfg.image_size) if dcfg.image_size else None

  def load(split):
    label = dcfg.label_column  # had been ignored: 'label' was read whatever it said
    try:
      try:
        return tfds_source.load_tfds(name, split, data_dir, label_key=label, image_size=size)
      except tfds_source.MissingFeatureError as e:
        if e.role != "image_key":
          raise
      return tfds_source.load_tfds(name, split, data_dir, label_key=label,
                                   text_key=dcfg.text_column)
    except tfds_source.MissingFeatureError as e:  # name the setting, not load_tfds' argument
      if e.role == "label_key":
        raise ValueError(f"config.dataset.label_column={label!r}: TFDS dataset {name!r} has "
                         f"no such feature; its features are {list(e.features)}") from None
      raise ValueError(f"config.dataset.text_column={dcfg.text_column!r}: TFDS dataset "
                       f"{name!r} has neither an 'image' feature nor this text feature; its "
                       f"features are {list(e.features)}") from None

  train_raw = load(dcfg.train_split)
  names = list(train_raw["label_names"])
  raw = {"train": train_raw}
  for role in ("val", "test"):
    split = dcfg[f"{role}_split"]
    known = train_raw["split_names"]  # [] where TFDS does not say (its mock_data)
    if role == "test" and split == "test" and known and "test" not in known:
      continue  # the default test split may be absent (tf_flowers has only 'train')
    if split:
      raw[role] = load(split)
  if "images" in train_raw:
    if dcfg.get("vocabulary", ""):
      from flaxnets.config import ConfigError
      raise ConfigError(f"config.dataset.vocabulary={dcfg.vocabulary!r}: TFDS dataset "
                        f"{name!r} holds images, which have no vocabulary; expected "
                        "vocabulary='' (or a text dataset)")
    splits = {k: {"inputs": v["images"], "labels": v["labels"]} for k, v in raw.items()}
    kind, vocab = "image", None
    if "val" not in splits:
      splits["train"], splits["val"] = sources.carve_validation(splits["train"],
                                                                dcfg.val_fraction)
  else:
    vocab, splits = _encode_texts(dcfg, {k: {"texts": np.array(list(v["texts"]), dtype=object),
                                             "labels": v["labels"]} for k, v in raw.items()},
                                  vocab)
    kind = "tokens"
  return Dataset(train=splits["train"], val=splits.get("val"), test=splits.get("test"),
                 num_classes=len(names), label_names=names, input_kind=kind, vocab=vocab,
                 name=dcfg.name)
