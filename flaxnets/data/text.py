"""Text to token ids: a word/char vocabulary, length buckets and language-model windows.

The vocabulary is built from training texts only and saved as plain UTF-8 JSON, so a
checkpoint can carry it and inference tokenizes exactly as training did.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import pathlib
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
LEVELS = ("word", "char")
_FORMAT = "flaxnets.vocabulary"
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)   # IMDB's line breaks
# split_punctuation's rules: 1 until 2026-11-29 (kept for vocabularies saved with it, whose
# models trained on its tokens), 2 since (_word_punct).
PUNCT_RULES = 2
_WORD_PUNCT_1 = re.compile(r"\w+(?:['\-]\w+)*|'\w+|([^\w\s])\1*")


def _punct_pattern(marks: str) -> re.Pattern:
  letter = rf"[\w{marks}]"
  joiner = "['\u2019\\-\u2010]"  # ' ’ - ‐
  clitic = rf"['\u2019](?i:s|re|ve|ll|d|m|t)(?!{letter})"
  return re.compile(rf"{letter}+(?:{joiner}{letter}+)*|{clitic}|([^\w\s{marks}])\1*")


# ASCII text has no combining marks: the same rules without their (slow) class.
_WORD_PUNCT_ASCII = _punct_pattern("")


@functools.cache
def _word_punct() -> re.Pattern:
  r"""Words (keeping inner hyphens/apostrophes: "re-imagining", "don't", "don’t"), clitics
  split off before ("it 's": "'s"; a quote before any other word stays a quote), and runs
  of one punctuation character ("...", "!!") as separate tokens. A word's letters include
  combining marks (Unicode category M: Devanagari vowel signs, Arabic harakat, decomposed
  accents), which Python's `\w` does not match; built on first use (~0.3 s)."""
  marks, start = [], None
  for c in range(sys.maxunicode + 2):
    is_mark = c <= sys.maxunicode and unicodedata.category(chr(c))[0] == "M"
    if is_mark and start is None:
      start = c
    elif not is_mark and start is not None:
      last = "" if c - 1 == start else "-" + re.escape(chr(c - 1))
      marks.append(re.escape(chr(start)) + last)
      start = None
  return _punct_pattern("".join(marks))


class Vocabulary:
  """Token <-> id mapping; id 0 is '<pad>', id 1 is '<unk>'.

  level='word' splits on whitespace (right for already tokenised text such as SST and
  TREC) after removing '<br />' tags; split_punctuation=True also separates punctuation
  from words (for raw text such as IMDB). level='char' uses single characters.
  """

  def __init__(self, tokens: Sequence[str], level: str = "word", lowercase: bool = True,
               split_punctuation: bool = False, punct_rules: int = PUNCT_RULES):
    tokens = list(tokens)
    if level not in LEVELS:
      raise ValueError(f"level={level!r}: expected one of {LEVELS}")
    if tokens[:2] != [PAD, UNK]:
      raise ValueError(f"vocabulary tokens must start with [{PAD!r}, {UNK!r}], "
                       f"found {tokens[:2]}")
    index = {}
    for i, t in enumerate(tokens):
      if not isinstance(t, str) or not t:
        raise ValueError(f"vocabulary token {i} is {t!r}: expected a non-empty string")
      if t in index:
        raise ValueError(f"vocabulary token {t!r} appears twice (ids {index[t]} and {i})")
      index[t] = i
    self.tokens = tokens
    self.level = level
    self.lowercase = bool(lowercase)
    self.split_punctuation = bool(split_punctuation)
    if punct_rules not in (1, PUNCT_RULES):
      raise ValueError(f"punct_rules={punct_rules!r}: expected 1 or {PUNCT_RULES}")
    self.punct_rules = punct_rules
    # Text never maps to the padding id: a literal "<pad>" in it is an unknown word.
    self._lookup = {t: i for t, i in index.items() if i != PAD_ID}

  @classmethod
  def build(cls, texts: Iterable[str], level: str = "word", lowercase: bool = True,
            min_freq: int = 1, max_size: int | None = None,
            split_punctuation: bool = False) -> "Vocabulary":
    """Builds from training texts: tokens seen >= min_freq times, most frequent first
    (ties by token), at most max_size ids in all (counting '<pad>' and '<unk>')."""
    if isinstance(texts, str):
      raise TypeError("texts must be a list of strings, not one string")
    if min_freq < 1:
      raise ValueError(f"min_freq={min_freq}: expected >= 1")
    if max_size is not None and max_size < 2:
      raise ValueError(f"max_size={max_size}: expected None or >= 2 (room for {PAD!r} "
                       f"and {UNK!r})")
    vocab = cls([PAD, UNK], level, lowercase, split_punctuation)
    counts = collections.Counter()
    for text in texts:
      counts.update(vocab.tokenize(text))
    counts.pop(PAD, None)
    counts.pop(UNK, None)
    kept = sorted((t for t, c in counts.items() if c >= min_freq),
                  key=lambda t: (-counts[t], t))
    if max_size is not None:
      kept = kept[:max_size - 2]
    return cls([PAD, UNK] + kept, level, lowercase, split_punctuation)

  def __len__(self) -> int:
    return len(self.tokens)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self._config() == other._config()

  def __repr__(self) -> str:
    return (f"Vocabulary(size={len(self)}, level={self.level!r}, "
            f"lowercase={self.lowercase}, split_punctuation={self.split_punctuation})")

  def tokenize(self, text: str) -> list[str]:
    """One text -> its tokens (words or characters)."""
    if not isinstance(text, str):
      raise TypeError(f"expected a text string, got {type(text).__name__}: {text!r:.80}")
    if self.lowercase:
      text = text.lower()
    if self.level == "char":
      return list(text)
    text = _BREAK.sub(" ", text)
    if self.split_punctuation:
      pattern = (_WORD_PUNCT_1 if self.punct_rules != PUNCT_RULES else
                 _WORD_PUNCT_ASCII if text.isascii() else _word_punct())
      return [m.group(0) for m in pattern.finditer(text)]
    return text.split()

  def token_ids(self, text: str) -> np.ndarray:
    """One text -> int32 [T] ids, unpadded and untruncated (e.g. a whole LM corpus)."""
    index = self._lookup
    return np.array([index.get(t, UNK_ID) for t in self.tokenize(text)], np.int32)

  def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (ids int32 [N, max_len] padded with 0, lengths int32 [N]).

    Texts longer than max_len keep their first max_len tokens. Unknown tokens map to
    '<unk>' (1). A text with no tokens becomes one '<unk>', so every length is >= 1
    (recurrent layers and mean pooling never see an empty sequence).
    """
    if isinstance(texts, str):
      raise TypeError("texts must be a list of strings, not one string")
    if not isinstance(max_len, (int, np.integer)) or max_len < 1:
      raise ValueError(f"max_len={max_len!r}: expected a positive int")
    ids = np.zeros((len(texts), max_len), np.int32)
    lengths = np.empty(len(texts), np.int32)
    index = self._lookup
    for i, text in enumerate(texts):
      row = [index.get(t, UNK_ID) for t in self.tokenize(text)[:max_len]] or [UNK_ID]
      ids[i, :len(row)] = row
      lengths[i] = len(row)
    return ids, lengths

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """int ids [T] -> text, skipping padding (words joined by spaces)."""
    ids = np.asarray(ids)
    if ids.size == 0:
      return ""
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"decode expects a 1-D sequence of int ids, got shape {ids.shape} "
                       f"dtype {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= len(self))]
    if bad.size:
      raise ValueError(f"id {int(bad[0])} is outside this vocabulary (0..{len(self) - 1})")
    toks = [self.tokens[i] for i in ids.tolist() if i != PAD_ID]
    return ("" if self.level == "char" else " ").join(toks)

  def _config(self) -> dict:
    return {"format": _FORMAT, "version": 1, "level": self.level,
            "lowercase": self.lowercase, "split_punctuation": self.split_punctuation,
            # the rules a vocabulary was built (and its model trained) with, kept for it
            **({"punct_rules": self.punct_rules} if self.split_punctuation else {}),
            "tokens": self.tokens}

  def to_dict(self) -> dict:
    """Plain JSON-able form, stored in checkpoint metadata."""
    return self._config()

  @classmethod
  def from_dict(cls, cfg: dict) -> "Vocabulary":
    """Inverse of to_dict()."""
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
      raise ValueError(f"not a vocabulary dict: expected \"format\": \"{_FORMAT}\"")
    return cls(cfg["tokens"], cfg["level"], cfg["lowercase"],
               bool(cfg.get("split_punctuation", False)), int(cfg.get("punct_rules", 1)))

  def save(self, path: str | os.PathLike) -> None:
    """Writes the vocabulary as UTF-8 JSON (atomically: a temp file, then rename)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(self._config(), ensure_ascii=False, indent=1), "utf-8")
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Vocabulary":
    """Reads a file written by save() (or the .json beside a Predictor.export); a malformed
    file gets an error naming the path."""
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
    try:
      cfg = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{path} is not a vocabulary file: expected UTF-8 JSON ({e})") \
          from None
    if isinstance(cfg, dict) and "format" not in cfg and "vocab" in cfg:
      if not cfg["vocab"]:  # Predictor.export's .json, of a model without one
        raise ValueError(f"{path}: the exported model has no vocabulary (input_kind "
                         f"{cfg.get('input_kind')!r}); expected a text model's")
      cfg = cfg["vocab"]  # Predictor.export's .json
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
      raise ValueError(f"{path} is not a vocabulary file: expected a JSON object with "
                       f"\"format\": \"{_FORMAT}\"")
    expected = {"level": str, "lowercase": bool, "tokens": list}
    for key, typ in expected.items():
      if not isinstance(cfg.get(key), typ):
        raise ValueError(f"{path}: field {key!r} is {cfg.get(key)!r:.60}, expected a "
                         f"{typ.__name__}")
    try:
      return cls.from_dict(cfg)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from None

  @classmethod
  def from_token_file(cls, path: str | os.PathLike, level: str = "word",
                      lowercase: bool = True,
                      split_punctuation: bool = False) -> "Vocabulary":
    """A vocabulary file of one token a line (Keras TextVectorization's `vocabulary=`
    file): ids in line order after '<pad>' 0 and '<unk>' 1, which the file may hold as its
    first two lines (or as Keras's '' and '[UNK]', or '[UNK]' alone first). The tokenizer
    rules are the arguments'. A word with whitespace in it, a 'char' line of another
    length, an empty line or a token given twice is an error naming its line; tokens the
    tokenizer never produces (capitals under lowercase, punctuation under
    split_punctuation) are listed by `unreachable()`."""
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
    try:
      text = path.read_text("utf-8-sig")
    except UnicodeDecodeError as e:
      raise ValueError(f"{path} is not a vocabulary file: expected UTF-8 text, one token a "
                       f"line ({e}); an export's vocabulary is the .json beside it") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
      lines.pop()  # the last line's newline
    # the file's own padding and unknown-token lines: flaxnets' names, or Keras's
    # get_vocabulary() ('' and '[UNK]') written a line each
    head = [line.removesuffix("\r") for line in lines[:2]]
    if level == "word":
      head = [h.strip() for h in head]
    skip = (2 if head in ([PAD, UNK], ["", "[UNK]"]) else
            1 if head[:1] in ([UNK], ["[UNK]"]) else 0)  # Keras StringLookup: '[UNK]' first
    cleaned = []
    for n, line in enumerate(lines[skip:], skip + 1):
      token = line.removesuffix("\r")
      if level == "word":
        token = token.strip()
        if any(c.isspace() for c in token):
          raise ValueError(f"{path}: line {n} is {line!r}: a word-level token holds no "
                           "whitespace (text is split on it)")
      elif len(token) != 1:
        raise ValueError(f"{path}: line {n} is {line!r}: expected one character a line "
                         "(level 'char'; a vocabulary with a newline character is a "
                         ".json, Vocabulary.save's)")
      if not token:
        raise ValueError(f"{path}: line {n} is empty; expected one token a line")
      cleaned.append(token)
    tokens, line_of = [PAD, UNK], {}
    for n, token in enumerate(cleaned, skip + 1):
      if token in (PAD, UNK) or (token == "[UNK]" and "[UNK]" in head[:skip]):
        raise ValueError(f"{path}: line {n} is {token!r}; expected the padding and unknown "
                         "tokens only as the first lines (ids 0 and 1), or not at all")
      if token in line_of:
        raise ValueError(f"{path}: line {n} is {token!r}, as line {line_of[token]} is; "
                         "expected each token once")
      line_of[token] = n
      tokens.append(token)
    if len(tokens) == 2:
      raise ValueError(f"{path}: no tokens; expected one token a line")
    return cls(tokens, level, lowercase, split_punctuation)

  def unreachable(self) -> list[str]:
    """Tokens this vocabulary's own tokenizer never produces from any text (a capital
    under lowercase, 'good.' under split_punctuation): their ids are never used."""
    return [t for t in self.tokens[2:] if self.tokenize(t) != [t]]


def padded_lengths(ids: np.ndarray) -> np.ndarray:
  """int [N, T] ids padded at the end with 0 -> int32 [N] lengths (1 + the last non-zero
  position; at least 1, as `Vocabulary.encode` gives)."""
  ids = np.asarray(ids)
  nonzero = ids != 0
  last = ids.shape[-1] - np.argmax(nonzero[..., ::-1], axis=-1)
  return np.where(nonzero.any(-1), last, 1).astype(np.int32)


def default_buckets(max_len: int) -> tuple[int, ...]:
  """Padded lengths to compile for: powers of two from 16 below max_len, then max_len."""
  if max_len < 1:
    raise ValueError(f"max_len={max_len}: expected a positive int")
  buckets, b = [], 16
  while b < max_len:
    buckets.append(b)
    b *= 2
  return tuple(buckets) + (max_len,)


def bucket_length(max_length_in_batch: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= the batch's longest sequence (the largest bucket if over)."""
  if not buckets:
    raise ValueError("buckets is empty: expected at least one padded length")
  buckets = sorted(buckets)
  for b in buckets:
    if b >= max_length_in_batch:
      return int(b)
  return int(buckets[-1])


def lm_windows(ids_1d: np.ndarray, seq_len: int,
               stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A token stream [T] -> (inputs [N, seq_len], targets [N, seq_len]) int32.

  Window k starts at k * stride (default stride = seq_len: no overlap); targets are the
  inputs shifted one token ahead. N = (T - seq_len - 1) // stride + 1; a tail shorter
  than a window is dropped.
  """
  ids_1d = np.asarray(ids_1d)
  if ids_1d.ndim != 1:
    raise ValueError(f"lm_windows expects a 1-D token stream, got shape {ids_1d.shape}")
  if seq_len < 1:
    raise ValueError(f"seq_len={seq_len}: expected >= 1")
  stride = seq_len if stride is None else stride
  if stride < 1:
    raise ValueError(f"stride={stride}: expected >= 1")
  if len(ids_1d) < seq_len + 1:
    raise ValueError(f"a token stream of length {len(ids_1d)} is too short for seq_len="
                     f"{seq_len}: need at least seq_len + 1 = {seq_len + 1} tokens")
  windows = np.lib.stride_tricks.sliding_window_view(ids_1d, seq_len + 1)[::stride]
  return (np.ascontiguousarray(windows[:, :-1], np.int32),
          np.ascontiguousarray(windows[:, 1:], np.int32))


def lm_eval_windows(ids_1d: np.ndarray, seq_len: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """A token stream [T] -> (inputs, targets [N, seq_len] int32, lengths [N] or None) that
  score every next-token target exactly once: non-overlapping windows, the last one padded
  with 0 and its real length in `lengths` (None when the windows fill exactly).

  For evaluation: `lm_windows` drops a tail shorter than a window, up to seq_len - 1 of the
  split's targets.
  """
  ids_1d = np.asarray(ids_1d)
  if ids_1d.ndim != 1:
    raise ValueError(f"lm_eval_windows expects a 1-D token stream, got shape {ids_1d.shape}")
  if seq_len < 1:
    raise ValueError(f"seq_len={seq_len}: expected >= 1")
  n_targets = len(ids_1d) - 1
  if n_targets < 1:
    raise ValueError(f"a token stream of length {len(ids_1d)} has no next-token target: "
                     "need at least 2 tokens")
  n = -(-n_targets // seq_len)
  x = np.zeros(n * seq_len, np.int32)
  y = np.zeros(n * seq_len, np.int32)
  x[:n_targets], y[:n_targets] = ids_1d[:-1], ids_1d[1:]
  lengths = None
  if n_targets % seq_len:
    lengths = np.full(n, seq_len, np.int32)
    lengths[-1] = n_targets % seq_len
  return x.reshape(n, seq_len), y.reshape(n, seq_len), lengths
