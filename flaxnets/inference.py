"""Inference: `load(workdir, step)` -> Predictor, on whatever devices exist now.

Only params and batch-norm statistics are restored (no optimizer state), as host
arrays, so a checkpoint written by 8 devices under pmap or mesh loads on one CPU.
Predictor takes raw inputs (image arrays or files, series, strings) and pads each
call to a bucketed batch size, so varying batch sizes reuse a few compiled shapes.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import zipfile
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flaxnets.data.text import padded_lengths
from flaxnets.data.types import check_float32_range, non_finite_examples
from flaxnets.training import steps
from flaxnets.warn import warn

BATCH_BUCKETS = (1, 8, 32, 128, 512)


@functools.lru_cache(maxsize=None)
def _identity_tx() -> Any:
  """One optax.identity() for every evaluation state: a state's tx is part of the key of
  the compiled eval step, and a new one each call had compiled it again."""
  import optax
  return optax.identity()


def _step_dir(workdir: pathlib.Path, step: str | int) -> pathlib.Path:
  """The folder of the requested step: 'best', 'latest' or a step number."""
  def steps_in(sub):
    d = workdir / sub
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []

  if workdir.is_file():
    raise NotADirectoryError(f"workdir {str(workdir)!r} is a file; expected the folder a "
                             "training run wrote (flaxnets.train(config, workdir=...))")
  if not workdir.is_dir():
    raise FileNotFoundError(f"workdir {str(workdir)!r} does not exist")
  if step == "best":
    found = steps_in("best")
    if found:
      return workdir / "best" / str(found[-1])
    step = "latest"  # no validation split: the last step is the best we know
  if step == "latest":
    found = steps_in("checkpoints")
    if not found:
      raise FileNotFoundError(f"no checkpoints in {str(workdir / 'checkpoints')!r}; train with "
                              "a workdir first")
    return workdir / "checkpoints" / str(found[-1])
  # a whole number: an int (not a bool), or its digits; int() would also take 78.9 and True
  if isinstance(step, str) and step.strip().isdigit():
    n = int(step)
  elif isinstance(step, (int, np.integer)) and not isinstance(step, bool) and step >= 0:
    n = int(step)
  else:
    raise ValueError(f"step={step!r}: expected 'best', 'latest' or a step number")
  for sub in ("checkpoints", "best"):
    if (workdir / sub / str(n)).is_dir():
      return workdir / sub / str(n)
  raise FileNotFoundError(f"step {n} not found in {str(workdir)!r}; saved steps: "
                          f"{sorted(set(steps_in('checkpoints')) | set(steps_in('best')))}")


class Predictor:
  """A trained model ready for inference: `.predict(x)`, `.predict_proba(x)`, `.export(path)`."""

  def __init__(self, model: Any, params: Any, batch_stats: Any, meta: dict[str, Any],
               path: pathlib.Path | None = None):
    self.model, self.params, self.batch_stats, self.meta = model, params, batch_stats, meta
    self.path = path
    self.label_names: list[str] = meta["label_names"]
    self.input_kind: str = meta["input_kind"]
    self.input_shape: tuple[int, ...] = tuple(meta["input_shape"])
    self.stats = {k: np.asarray(v, np.float32) for k, v in meta["stats"].items()}
    self.vocab = None
    if meta.get("vocab") is not None:
      from flaxnets.data.text import Vocabulary
      self.vocab = Vocabulary.from_dict(meta["vocab"])
    self._predict = jax.jit(self._proba)
    self._warned = False  # about missing seq_lengths, once

  @property
  def config(self):
    import ml_collections
    return ml_collections.ConfigDict(self.meta["config"])

  def _proba(self, variables, batch):
    state = _Vars(self.model.apply, variables["params"], variables.get("batch_stats", {}))
    return steps.make_predict_step(self.stats)(state, batch)

  # -- inputs ------------------------------------------------------------------------------
  def prepare(self, inputs: Any, seq_lengths: Any = None) -> dict[str, np.ndarray]:
    """Raw inputs -> a batch dict of arrays shaped like the training inputs.

    `seq_lengths` (ints [N], each in [1, T]) gives each sequence's valid steps, as the
    third item of train(data=...) does; token ids padded at the end with 0 need none.
    """
    if isinstance(inputs, np.ndarray) and inputs.ndim == 0 and inputs.dtype.kind in "USO":
      inputs = inputs.item()  # np.array("a text"): one text (or path), like a str
    if isinstance(inputs, (str, pathlib.Path)):
      inputs = [inputs]
    if self.input_kind == "tokens":
      batch = self._prepare_tokens(inputs, given_lengths=seq_lengths is not None)
    else:
      batch = self._prepare_arrays(inputs)
    return self._with_lengths(batch, seq_lengths)

  def _prepare_tokens(self, inputs: Any, given_lengths: bool) -> dict[str, np.ndarray]:
    t = self.input_shape[0]
    if isinstance(inputs, (list, tuple)) and not inputs:
      inputs = np.zeros((0, t), np.int32)  # no examples
    texts = isinstance(inputs, (list, tuple)) and any(  # numpy had made [b'..', '..'] '<U'
        isinstance(i, (str, bytes, pathlib.Path)) for i in inputs)
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "USO":
      texts, inputs = True, list(inputs.reshape(-1) if inputs.ndim == 2 and
                                 inputs.shape[1:] == (1,) else inputs)
    if not texts:
      if isinstance(inputs, (list, tuple)):  # nested lists of ids, not texts
        try:
          inputs = np.asarray(inputs)
        except ValueError:  # ragged: numpy's "inhomogeneous shape"
          lengths = sorted({len(i) if hasattr(i, "__len__") else 1 for i in inputs})
          raise ValueError(f"inputs: lists of {lengths} ids; expected id lists of one "
                           "length (pad the end with 0), or text strings") from None
        if not np.issubdtype(inputs.dtype, np.integer):
          raise ValueError(f"inputs: a list of {inputs.dtype} values; expected text strings "
                           "or int token ids [batch, T]")
      if not (isinstance(inputs, np.ndarray) and np.issubdtype(inputs.dtype, np.integer)):
        raise ValueError(f"inputs of type {type(inputs).__name__}"
                         + (f" and dtype {inputs.dtype}" if hasattr(inputs, "dtype") else "")
                         + ": expected int token ids [batch, T]"
                         + (" or text strings" if self.vocab is not None else ""))
      ids = inputs
      if ids.ndim == 3 and ids.shape[-1] == 1:
        ids = ids[..., 0]  # [batch, T, 1]
      if ids.ndim == 1:
        ids = ids[None]  # one example
      if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"token ids of shape {inputs.shape}: expected [batch, T] with T >= 1 "
                         f"(the model trained on T={t}), or one example [T]")
      vocab_size = getattr(self.model, "vocab_size", None)
      if ids.size and (ids.min() < 0 or (vocab_size and ids.max() >= vocab_size)):
        raise ValueError(f"token ids span [{ids.min()}, {ids.max()}]: expected ids in "
                         f"[0, {vocab_size}), the model's vocabulary")
      return {"inputs": ids.astype(np.int32), "seq_lengths": padded_lengths(ids)}
    if self.vocab is None:
      raise ValueError("inputs: text strings, but this model was trained on int token arrays "
                       "without a vocabulary; expected int ids [batch, T]")
    for i, s in enumerate(inputs):
      if not isinstance(s, str):
        decode = " (decode bytes first: b.decode())" if isinstance(s, bytes) else ""
        raise ValueError(f"inputs[{i}] of type {type(s).__name__}: expected text strings"
                         f"{decode} (or int token ids [batch, T])")
    if given_lengths:
      raise ValueError("seq_lengths: texts carry their own lengths; pass seq_lengths with "
                       "int token ids only")
    ids, lengths = self.vocab.encode(list(inputs), t)
    return {"inputs": ids, "seq_lengths": lengths}

  def _prepare_arrays(self, inputs: Any) -> dict[str, np.ndarray]:
    if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], (str, pathlib.Path)):
      inputs = np.stack([self._read_image(p) for p in inputs])
    x = np.asarray(inputs)
    want = self.input_shape
    if x.shape == (0,):  # an empty list: no examples
      x = np.zeros((0,) + want, np.float32)
    image_shape = tuple(self.meta.get("image_shape") or ())
    if (self.input_kind == "series" and x.shape == image_shape) or (
        want[-1] == 1 and x.shape == want[:-1]):
      x = x[None]  # one example: an image read as rows, or one without its channel axis
    if self.input_kind == "series" and x.ndim >= 3 and x.shape[1:] != want:
      # images fed row by row (explicit sizes: -1 is ambiguous for zero examples)
      x = x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:])))
    if x.shape == want:
      x = x[None]
    if want[-1] == 1 and x.ndim == len(want) and x.shape[1:] == want[:-1]:
      x = x[..., None]  # grayscale images or univariate series without the channel axis
    if x.shape[1:] != want:
      raise ValueError(f"inputs of shape {x.shape}: expected [batch, {', '.join(map(str, want))}] "
                       f"(or one example {want})")
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == bool):  # bfloat16 too
      raise ValueError(f"inputs of dtype {x.dtype}: expected numbers")
    bad = non_finite_examples(x)
    if not bad:
      check_float32_range(x, "inputs")  # float64 past float32's range: had been "NaN"
    x = x.astype(np.float32)
    bad = bad or non_finite_examples(x)
    if bad:
      raise ValueError(f"inputs: {bad} example(s) hold NaN or infinity; expected finite values")
    return {"inputs": x}

  def _with_lengths(self, batch: dict[str, np.ndarray], seq_lengths: Any) -> dict[str, np.ndarray]:
    """Checks given seq_lengths against the inputs, or warns where the model needs them."""
    n = len(batch["inputs"])
    if seq_lengths is None:
      if self.input_kind == "series" and self.meta.get("seq_lengths") and not self._warned:
        self._warned = True
        warn(f"this model was trained with seq_lengths, and none were given: each "
             f"input is read as all {self.input_shape[0]} steps; pass "
             "predict(x, seq_lengths=...) for padded sequences (flaxnets predict: an "
             ".npz file of 'inputs' and 'seq_lengths')")
      return batch
    if self.input_kind == "image":
      raise ValueError("seq_lengths: this model reads images, which have no time axis; "
                       "expected seq_lengths=None")
    lengths = np.asarray(seq_lengths)
    if lengths.ndim == 0:
      lengths = lengths[None]
    t = batch["inputs"].shape[1]
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
      raise ValueError(f"seq_lengths of shape {lengths.shape} and dtype {lengths.dtype}: "
                       f"expected ints [{n}], one per input")
    if n and (lengths.min() < 1 or lengths.max() > t):
      raise ValueError(f"seq_lengths span [{lengths.min()}, {lengths.max()}]: expected lengths "
                       f"in [1, {t}] (the time axis of the inputs)")
    return {**batch, "seq_lengths": lengths.astype(np.int32)}

  def _read_image(self, path) -> np.ndarray:
    """One image file decoded as training decoded its folder, at the trained size."""
    from PIL import Image
    from flaxnets.data import files
    p = pathlib.Path(path)
    if p.is_dir():
      raise IsADirectoryError(f"image file {str(p)!r} is a folder: expected image files "
                              f"(e.g. {str(p / '*.png')!r})")
    if not p.is_file():
      raise FileNotFoundError(f"image file {str(p)!r} does not exist")
    shape = (self.input_shape if self.input_kind == "image" else
             self.meta.get("image_shape"))  # an RNN reads images as rows
    if not shape:
      raise ValueError(f"image file {str(p)!r}: this model reads {self.input_kind} inputs, "
                       "not images")
    lo, hi = self.meta.get("input_range") or (0.0, 255.0)  # arrays given to train()
    # e.g. x / 255, or scikit-learn's 0..16 digits: files had given 255x (16x) the inputs.
    # The pixels of a set of 8-bit images reach past 127.
    if lo < 0 or hi < 128 or hi > 255:
      raise ValueError(f"image file {str(p)!r}: this model trained on arrays in [{lo:g}, "
                       f"{hi:g}], and image files decode to pixels in 0..255; pass an array "
                       "of the image scaled as the training arrays were")
    h, w, c = shape
    try:
      with Image.open(p) as img:
        # e.g. a colour photo for a grayscale model: converted as training converts a
        # split whose channels differ from the train split's
        arr = files.match_channels(files.image_to_array(img, (h, w)), c)
    except Exception as e:
      raise ValueError(f"cannot read image {str(p)!r}: {e}") from e
    return arr.astype(np.float32)

  # -- prediction ---------------------------------------------------------------------------
  def predict_proba(self, inputs: Any, seq_lengths: Any = None) -> np.ndarray:
    """Class probabilities float32 [N, classes] for N raw inputs ([N, T, vocab] for a
    language model). `seq_lengths`: see `prepare`."""
    batch = self.prepare(inputs, seq_lengths)
    n = len(batch["inputs"])
    variables = {"params": self.params, "batch_stats": self.batch_stats}
    if n == 0:  # the shape one example would give, without computing it
      one = {k: np.ones((1,) + v.shape[1:], v.dtype) for k, v in batch.items()}
      out = jax.eval_shape(self._proba, variables, one)
      return np.zeros((0,) + out.shape[1:], np.float32)
    outs = []
    for start in range(0, n, BATCH_BUCKETS[-1]):
      chunk = {k: v[start:start + BATCH_BUCKETS[-1]] for k, v in batch.items()}
      m = len(chunk["inputs"])
      size = next(b for b in BATCH_BUCKETS if b >= m)
      padded = {k: np.concatenate([v, np.repeat(v[-1:], size - m, axis=0)])
                for k, v in chunk.items()}
      outs.append(np.asarray(self._predict(variables, padded))[:m])
    return np.concatenate(outs)

  def predict(self, inputs: Any, seq_lengths: Any = None) -> np.ndarray:
    """Class ids int [N]; a language model's most likely next token ids [N, T]."""
    return self.predict_proba(inputs, seq_lengths).argmax(-1)

  def predict_labels(self, inputs: Any, seq_lengths: Any = None) -> list[str]:
    self._check_classifier("predict_labels")
    return [self.label_names[i] for i in self.predict(inputs, seq_lengths)]

  def _check_classifier(self, what: str) -> None:
    if self.meta.get("task") == "lm":
      raise ValueError(f"{what}: this is a language model (task 'lm'); predict_proba gives "
                       "its next-token probabilities [N, T, vocab], not one label per input, "
                       "and generate(prompt) (`flaxnets generate`) continues a text")

  def generate(self, prompt: str, length: int = 200, temperature: float = 1.0,
               seed: int = 0, window: int | None = None) -> str:
    """A language model's continuation of `prompt`: prompt + `length` tokens drawn one by
    one (temperature < 1 sharpens the distribution, > 1 flattens it), seeded. Neither
    padding nor '<unk>' is drawn. Each token reads the last `window` tokens (default: the
    training windows' length)."""
    if self.meta.get("task") != "lm":
      raise ValueError("generate: this is a classifier (task "
                       f"{self.meta.get('task', 'classification')!r}); generate continues "
                       "text with a language model (char_lm on a text_file dataset)")
    if self.vocab is None:
      raise ValueError("generate: this language model was trained on int token arrays "
                       "without a vocabulary; use flaxnets.models.classifiers.sample on ids")
    if not isinstance(prompt, str):
      raise ValueError(f"prompt of type {type(prompt).__name__}: expected a text string")
    ids = self.vocab.token_ids(prompt)
    if not len(ids):
      raise ValueError(f"prompt={prompt!r}: no tokens; expected some text to continue")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed={seed!r}: expected an integer >= 0")
    from flaxnets.data.text import PAD_ID, UNK_ID
    from flaxnets.models.classifiers import sample
    variables = {"params": self.params}
    if self.batch_stats:
      variables["batch_stats"] = self.batch_stats
    out = sample(self.model, variables, ids, length, jax.random.PRNGKey(seed),
                 temperature=temperature,
                 window=self.input_shape[0] if window is None else window,
                 banned=(PAD_ID, UNK_ID))
    new = self.vocab.decode(np.asarray(out)[len(ids):])
    return prompt + new if self.vocab.level == "char" or not new else f"{prompt} {new}"

  def describe(self, inputs: Sequence[str], top: int = 3) -> list[str]:
    """CLI lines: input, predicted label and the top probabilities."""
    self._check_classifier("describe")
    if isinstance(inputs, (str, os.PathLike)):  # one path, not its characters
      inputs = [inputs]
    bad = (inputs if not isinstance(inputs, (list, tuple)) else
           next((s for s in inputs if not isinstance(s, (str, os.PathLike))), None))
    if bad is not None:
      raise TypeError(f"describe: an input of type {type(bad).__name__}; expected file paths "
                      "or texts (str); for arrays call predict_proba")
    inputs = [os.fspath(s) for s in inputs]
    if top < 1:
      raise ValueError(f"top={top!r}: expected an integer >= 1")
    # Runs of image files (or texts) are predicted together; each .npy file (one
    # example or a batch: floats shaped like the inputs, or int token ids) on its own, as
    # each .npz of 'inputs' and 'seq_lengths' (padded series and their lengths).
    groups: list[tuple[list[str], Any, Any]] = []
    for s in inputs:
      if s.endswith((".npy", ".npz")) and not pathlib.Path(s).is_file():
        raise FileNotFoundError(f"array file {s!r} does not exist")
      if s.endswith((".npy", ".npz")):
        try:
          arr, lengths = self._load_array_file(s)
          if self.input_kind == "tokens" and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"an array of {arr.dtype}: expected int token ids [batch, T]")
          n = len(self.prepare(arr, lengths)["inputs"])
        except EOFError:  # np.load of an empty or cut-short file
          raise ValueError(f"{s}: the file ends before its array does; expected a file "
                           "written by numpy.save (.npy) or numpy.savez (.npz)") from None
        except ValueError as e:
          raise ValueError(f"{s}: {e}") from None
        if n == 0:
          raise ValueError(f"{s}: an array of shape {arr.shape} holds no examples")
        groups.append(([s] if n == 1 else [f"{s}#{i}" for i in range(n)], arr, lengths))
      elif groups and isinstance(groups[-1][1], list):
        groups[-1][0].append(s)
        groups[-1][1].append(s)
      else:
        groups.append(([s], [s], None))
    lines = []
    for names, raw, lengths in groups:
      for name, p in zip(names, self.predict_proba(raw, lengths)):
        order = np.argsort(-p)[:top]
        tops = ", ".join(f"{self.label_names[j]}={p[j]:.3f}" for j in order)
        lines.append(f"{name}\t{self.label_names[order[0]]}\t{tops}")
    return lines

  @staticmethod
  def _load_array_file(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A .npy array, or the 'inputs' and optional 'seq_lengths' of a .npz file."""
    if path.endswith(".npy"):
      return np.load(path, allow_pickle=False), None
    expected = "expected one written by numpy.savez(path, inputs=x, seq_lengths=lengths)"
    try:
      f = np.load(path, allow_pickle=False)
    except zipfile.BadZipFile as e:
      raise ValueError(f"not a .npz file ({e}); {expected}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):  # a .npy array under a .npz name
      raise ValueError(f"a single array, not a .npz file of named arrays; {expected}")
    with f:
      unknown = sorted(set(f.files) - {"inputs", "seq_lengths"})
      if "inputs" not in f.files or unknown:
        raise ValueError(f"arrays {sorted(f.files)}: expected 'inputs' and optionally "
                         "'seq_lengths' (numpy.savez(path, inputs=x, seq_lengths=lengths))")
      return f["inputs"], (f["seq_lengths"] if "seq_lengths" in f.files else None)

  def evaluate(self, split: str = "test") -> dict[str, Any]:
    """Metrics on a split of the dataset the model was trained on."""
    from flaxnets.data import sources
    from flaxnets.models import registry
    from flaxnets.training import loop
    config = self.config
    if config.dataset.name == "arrays":
      raise ValueError("this model was trained on numpy arrays passed to train(data=...), "
                       "which the checkpoint does not hold; call flaxnets.evaluate(result) "
                       "on train's result, or predict on the arrays")
    # a given vocabulary (config.dataset.vocabulary) is the checkpoint's copy: its source
    # may have changed or gone since
    dataset = sources.load_dataset(config.dataset, vocab=self.vocab if config.dataset.get(
        "vocabulary") else None)
    dataset = sources.adapt(dataset, getattr(registry.MODELS[config.model.name], "input_kinds",
                                             ("image", "series", "tokens")))
    from flaxnets.training import checkpoint
    # Scores are only meaningful on the classes, inputs and vocabulary the model learned.
    diffs = checkpoint.data_differences(self.meta,
                                        checkpoint.metadata(config, dataset, self.stats,
                                                            digest=False))
    if diffs:
      raise ValueError(f"the dataset differs from the one this checkpoint was trained on "
                       f"({'; '.join(diffs)}); the data at {config.dataset.path!r}, or how "
                       "this flaxnets reads it, changed since training")
    from flaxnets.training.state import TrainState
    state = TrainState.create(apply_fn=self.model.apply, params=self.params, tx=_identity_tx(),
                              batch_stats=self.batch_stats, rng=jax.random.PRNGKey(0))
    result = loop.TrainResult(state=state, history=[], val_metrics=None, test_metrics=None,
                              config=config, model=self.model, dataset=dataset, stats=self.stats,
                              workdir=None, train_time_s=0.0)
    return loop.evaluate_with(result, split, owner=self)

  # -- export --------------------------------------------------------------------------------
  def export(self, path: str | pathlib.Path) -> pathlib.Path:
    """Serialize predict_proba (weights included) with jax.export; batch size symbolic.

    Reload without flaxnets: `jax.export.deserialize(open(path, 'rb').read()).call(x)`
    (token models, and series models trained with seq_lengths, take (x, seq_lengths);
    a recurrent model trained on images takes the images). `<path>.json` records the
    inputs and labels.
    """
    from jax import export
    path = pathlib.Path(path).expanduser()
    if path.is_dir():  # checked before the (slow) export, so nothing is half written
      raise IsADirectoryError(f"export path {str(path)!r} is a directory; expected a file "
                              "name such as 'model.jax' (its .json is written beside it)")
    variables = jax.tree.map(jnp.asarray, {"params": self.params, "batch_stats": self.batch_stats})
    (b,) = export.symbolic_shape("b")
    if self.input_kind == "tokens" or (self.input_kind == "series"
                                       and self.meta.get("seq_lengths")):
      def fn(x, lengths):
        return self._proba(variables, {"inputs": x, "seq_lengths": lengths})
      dtype = jnp.int32 if self.input_kind == "tokens" else jnp.float32
      specs = (jax.ShapeDtypeStruct((b,) + self.input_shape, dtype),
               jax.ShapeDtypeStruct((b,), jnp.int32))
    elif self.input_kind == "series" and self.meta.get("image_shape"):
      rows = self.input_shape  # a model that read images row by row takes images, as
      def fn(x):               # predict_proba and the training data do
        return self._proba(variables, {"inputs": x.reshape((x.shape[0],) + rows)})
      specs = (jax.ShapeDtypeStruct((b,) + tuple(self.meta["image_shape"]), jnp.float32),)
    else:
      def fn(x):
        return self._proba(variables, {"inputs": x})
      specs = (jax.ShapeDtypeStruct((b,) + self.input_shape, jnp.float32),)
    exported = export.export(jax.jit(fn))(*specs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(exported.serialize())
    path.with_suffix(path.suffix + ".json").write_text(json.dumps({
        "inputs": [{"shape": ["batch", *s.shape[1:]], "dtype": str(s.dtype)} for s in specs],
        "label_names": self.label_names, "input_kind": self.input_kind,
        "vocab": self.meta.get("vocab")}, indent=2))
    return path


class _Vars:
  """The three fields steps.apply_model reads from a state."""

  def __init__(self, apply_fn, params, batch_stats):
    self.apply_fn, self.params, self.batch_stats = apply_fn, params, batch_stats


def load(workdir: str | pathlib.Path, step: str | int = "best") -> Predictor:
  """Restore params (and batch_stats) of `step` ('best' | 'latest' | N) for inference.

  A step that a running training prunes while it is read is replaced by the newer one
  ('best' and 'latest'); a damaged step whose copy in the other folder (checkpoints/ or
  best/ hold the same step) is intact loads from that copy, with a warning.
  """
  from flaxnets.training.checkpoint import CheckpointError
  workdir = pathlib.Path(workdir).expanduser().absolute()  # Orbax needs absolute paths
  for attempt in range(3):
    step_dir = _step_dir(workdir, step)
    try:
      predictor = _load_step(step_dir)
      best = predictor.meta.get("best_value")
      if step == "best" and step_dir.parent.name == "checkpoints" and best is not None:
        metric = ((predictor.meta.get("config") or {}).get("checkpoint") or {}).get(
            "best_metric", "metric")  # best/ lost (deleted by hand, say)
        warn(f"{str(workdir / 'best')!r} holds no checkpoint, though this run saved "
             f"a best one (validation {metric} {best:g}); loaded the latest step, "
             f"{step_dir.name}, instead")
      return predictor
    except CheckpointError as e:
      if step in ("best", "latest") and not step_dir.exists() and attempt < 2:
        continue  # pruned by a run that saved a newer step meanwhile
      other = workdir / ("checkpoints" if step_dir.parent.name == "best" else "best") / \
          step_dir.name
      if not other.is_dir():
        raise
      try:
        predictor = _load_step(other)
      except CheckpointError:
        raise e from None
      warn(f"{e}; loaded the same step's copy in {other} instead")
      return predictor


def _load_step(step_dir: pathlib.Path) -> Predictor:
  """load() of one step folder."""
  from flaxnets.models import registry
  from flaxnets.training.checkpoint import _ocp, damaged_error
  from flaxnets.training.state import dummy_inputs
  ocp = _ocp()
  meta_file = step_dir / "meta" / "metadata"
  try:
    meta = json.loads(meta_file.read_text())
  except (OSError, ValueError) as e:
    raise damaged_error(step_dir, e) from e
  # JSON turned the config's tuples into lists; the model gets them back as trained.
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in meta["config"]["model"].items() if k != "name"}
  fields = registry.model_fields(meta["model"])
  if "num_classes" in fields and "num_classes" not in kwargs:
    kwargs["num_classes"] = meta["num_classes"]
  if "vocab_size" in fields and kwargs.get("vocab_size") is None:
    if meta.get("vocab_size") is not None:
      kwargs["vocab_size"] = meta["vocab_size"]
    elif meta.get("vocab") is not None:  # checkpoints written before meta had vocab_size
      kwargs["vocab_size"] = len(meta["vocab"]["tokens"])
  model = registry.build_model(meta["model"], **kwargs)
  x, lengths = dummy_inputs(tuple(meta["input_shape"]), meta["input_kind"])
  abstract = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0),
                                                "dropout": jax.random.PRNGKey(0)},
                                               x, lengths, train=False))
  target = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    tree = checkpointer.restore(
        step_dir / "state", args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                        partial_restore=True))
  except Exception as e:  # orbax / tensorstore raise several types
    raise damaged_error(step_dir, e) from e
  finally:
    checkpointer.close()
  return Predictor(model, tree["params"], tree.get("batch_stats", {}), meta, step_dir)
