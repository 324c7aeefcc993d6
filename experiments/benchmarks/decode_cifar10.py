"""Benchmark: decode all 60,000 CIFAR-10 JPEGs straight from their .tar.gz archives.

Times flaxnets.data.files.read_image_folder (the acceptance figure: both archives in
< 30 s on a 2-core machine) under several worker settings, plus the building blocks
(tar streaming, serial / threaded / process-pool decoding, Image.draft) that chose its
design. Prints a table and writes experiments/results/decode_cifar10.json.

  python experiments/benchmarks/decode_cifar10.py [--data-dir DIR] [--repeats 3]

Skips (exit 0) when the archives are absent.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import multiprocessing
import os
import pathlib
import platform
import sys
import tarfile
import time

import numpy as np
import PIL
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from flaxnets.data.files import read_image_folder  # noqa: E402

SPLITS = ("train", "test")
CHUNK = 64


def _read_bytes(archive: pathlib.Path) -> list[bytes]:
  with tarfile.open(archive, "r|*") as tf:
    return [tf.extractfile(m).read() for m in tf if m.isfile() and m.name.endswith(".jpg")]


def _decode(blob: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(blob)))


def _decode_many(blobs: list[bytes]) -> list[np.ndarray]:
  return [_decode(b) for b in blobs]


def _decode_resize(blob: bytes, draft: bool) -> np.ndarray:
  im = Image.open(io.BytesIO(blob))
  if draft:
    im.draft("RGB", (16, 16))
  return np.asarray(im.resize((16, 16), Image.Resampling.BILINEAR))


def _chunks(blobs):
  return [blobs[i:i + CHUNK] for i in range(0, len(blobs), CHUNK)]


def _timed(fn):
  """Wall seconds, CPU seconds of this process (all threads), result."""
  t, c = time.perf_counter(), time.process_time()
  out = fn()
  return time.perf_counter() - t, time.process_time() - c, out


def main() -> int:
  from common import positive_int  # this folder is on sys.path when run as a file
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", type=pathlib.Path,
                      default=REPO.parent / "shared" / "data" / "cifar10_jpg")
  parser.add_argument("--repeats", type=positive_int, default=1,
                      help="runs per read_image_folder setting; the median is reported")
  parser.add_argument("--out", type=pathlib.Path,
                      default=REPO / "experiments" / "results" / "decode_cifar10.json")
  args = parser.parse_args()
  archives = {s: args.data_dir / f"{s}.tar.gz" for s in SPLITS}
  missing = [str(p) for p in archives.values() if not p.is_file()]
  if missing:
    print(f"skipped: CIFAR-10 archives not found: {missing}")
    return 0

  load_before = os.getloadavg()
  rows = []

  def api(label, **kw):
    def run():
      return [read_image_folder(archives[s], split=s, **kw) for s in SPLITS]
    runs = [_timed(run) for _ in range(args.repeats)]
    secs, out = float(np.median([r[0] for r in runs])), runs[0][2]
    cpu = float(np.median([r[1] for r in runs]))
    n = sum(len(x[0]) for x in out)
    rows.append({"method": label, "images": n, "seconds": round(secs, 2),
                 "cpu_seconds": round(cpu, 2), "images_per_s": round(n / secs),
                 "all_seconds": [round(r[0], 2) for r in runs]})
    print(f"  {label:<58} {secs:7.2f} s  (runs: {rows[-1]['all_seconds']})", flush=True)
    return out

  print("read_image_folder on both archives:")
  ref = api(f"read_image_folder, default (num_workers=None: {min(8, os.cpu_count() or 1)} "
            "threads)")
  for nw in (1, 2, 4):
    out = api(f"read_image_folder, num_workers={nw}", num_workers=nw)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(ref, out))
  api("read_image_folder, image_size=(16, 16) (draft + resize)", image_size=(16, 16))

  print("building blocks (both archives; decode timed from bytes in memory):")

  def block(label, fn, n=None):  # n: images; None counts what fn returned
    secs, cpu, out = _timed(fn)  # cpu misses the worker processes' time
    n = len(out) if n is None else n
    rows.append({"method": label, "images": n, "seconds": round(secs, 2),
                 "cpu_seconds": round(cpu, 2), "images_per_s": round(n / secs)})
    print(f"  {label:<58} {secs:7.2f} s", flush=True)
    return out

  blobs = block("tar.gz streaming, member bytes only (no decode)",
                lambda: [b for s in SPLITS for b in _read_bytes(archives[s])])
  n = len(blobs)
  block("decode serial", lambda: _decode_many(blobs), n)
  with concurrent.futures.ThreadPoolExecutor(2) as ex:
    block("decode 2 threads, one task per image", lambda: list(ex.map(_decode, blobs)), n)
    block(f"decode 2 threads, {CHUNK}-image tasks",
          lambda: list(ex.map(_decode_many, _chunks(blobs))), n)
  ctx = multiprocessing.get_context("spawn")  # fork is unsafe once jax is imported
  with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
    ex.submit(int).result()  # start the workers outside the timing
    block(f"decode 2 processes (spawn), {CHUNK}-image tasks",
          lambda: list(ex.map(_decode_many, _chunks(blobs))), n)
  block("decode + resize to 16x16, no draft",
        lambda: [_decode_resize(b, False) for b in blobs], n)
  block("decode + resize to 16x16, Image.draft first",
        lambda: [_decode_resize(b, True) for b in blobs], n)

  acceptance = rows[0]["seconds"]
  result = {
      "benchmark": "decode_cifar10",
      "what": f"all {n:,} CIFAR-10 JPEGs of train.tar.gz + test.tar.gz, decoded to uint8",
      "command": "python experiments/benchmarks/decode_cifar10.py " + " ".join(sys.argv[1:]),
      "repeats": args.repeats,
      "acceptance": {"seconds": acceptance, "limit_s": 30, "passed": acceptance < 30},
      "rows": rows,
      "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                  "python": platform.python_version(), "pillow": PIL.__version__,
                  "loadavg_before": [round(x, 2) for x in load_before],
                  "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")

  print(f"\n| {'method':<58} | wall s | CPU s | images/s |\n"
        f"|{'-' * 60}|--------|-------|----------|")
  for r in rows:
    print(f"| {r['method']:<58} | {r['seconds']:6.2f} | {r['cpu_seconds']:5.1f} | "
          f"{r['images_per_s']:8d} |")
  print("(CPU s: this process, all its threads; the process-pool row leaves out its workers)")
  print(f"\nacceptance: {acceptance:.2f} s for {n:,} images (limit 30 s) -> "
        f"{'PASS' if acceptance < 30 else 'FAIL'}; load average before {load_before[0]:.2f} "
        f"on {os.cpu_count()} CPUs; wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
