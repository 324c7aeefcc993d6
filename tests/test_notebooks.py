"""Every notebook in colab/ runs top to bottom on the CPU with FAST on, and its results hold.

Each notebook ends by printing one line `NOTEBOOK_RESULT {json}`; the checks below parse
it and assert on accuracies, on comparisons the notebook makes (resumed vs uninterrupted
parameters, exported vs in-process predictions, pmap vs mesh) and on the files it wrote,
not merely that it ran. One test per notebook, so a failure names the notebook.

The kernel runs this interpreter (`sys.executable`): a kernelspec for it is written to a
temporary JUPYTER_PATH, so whatever other 'python3' kernels a machine has do not matter,
and the first (injected) cell checks it. The kernel's environment: FLAXNETS_FAST=1, CPU
only, XLA_FLAGS without conftest's 8 forced host devices (04_many_devices asks for them
itself, as it would on a CPU-only Colab runtime), FLAXNETS_SST2_DIR when
../shared/data/sst2 exists (so 02_text_rnn trains on real SST-2), and a JAX persistent
compilation cache shared by the notebooks of a session (in .pytest_cache), so a step that
several notebooks compile alike is compiled once.

Each notebook runs in a fresh temporary directory, which is where its `runs/` go; the
executed copy is saved there too (`executed.ipynb`) for a look after a failure.
"""
from __future__ import annotations

import json
import os
import pathlib
import resource
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"  # as in conftest
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
KERNEL = "flaxnets-test"
CELL_TIMEOUT_S = 600  # per cell; a loaded 2-core CI machine compiles slowly
MARKER = "NOTEBOOK_RESULT "


@pytest.fixture(scope="session")
def kernel_env(tmp_path_factory, request):
  """(JUPYTER_PATH holding a kernelspec for this interpreter, the kernel's environment)."""
  jupyter = tmp_path_factory.mktemp("jupyter")
  spec = jupyter / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "flaxnets tests", "language": "python"}))
  cache = getattr(request.config, "cache", None)
  jax_cache = (cache.mkdir("jax-compilation-cache") if cache is not None
               else tmp_path_factory.mktemp("jax-compilation-cache"))
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env.update({"FLAXNETS_FAST": "1", "JAX_PLATFORMS": "cpu",
              "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
              "PYDEVD_DISABLE_FILE_VALIDATION": "1",   # quiets a debugpy warning on 3.11+
              "TF_CPP_MIN_LOG_LEVEL": "2"})
  env.pop("FLAXNETS_SST2_DIR", None)
  if (SHARED_DATA / "sst2" / "train.tsv").is_file():
    env["FLAXNETS_SST2_DIR"] = str(SHARED_DATA / "sst2")
  return str(jupyter), env


def _stdout(cell) -> str:
  return "".join(o.get("text", "") for o in cell.get("outputs", [])
                 if o.get("output_type") == "stream" and o.get("name") == "stdout")


def run_notebook(path: pathlib.Path, cwd: pathlib.Path, jupyter_path: str, env: dict,
                 monkeypatch) -> tuple[dict, str, float, float]:
  """Execute a notebook; returns (its NOTEBOOK_RESULT, all its stdout, wall s, kernel CPU s)."""
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print('KERNEL_PYTHON', sys.executable)"))
  monkeypatch.setenv("JUPYTER_PATH", jupyter_path)  # where the client finds the kernelspec
  client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                   startup_timeout=180,  # a loaded machine starts kernels slowly
                                   resources={"metadata": {"path": str(cwd)}})
  start = time.perf_counter()
  cpu_before = _children_cpu()
  try:
    client.execute(env=env)
  finally:
    seconds = time.perf_counter() - start
    nbformat.write(nb, str(cwd / "executed.ipynb"))
  cpu = _children_cpu() - cpu_before  # the kernel, once it has exited and been reaped
  stdout = [_stdout(c) for c in nb.cells if c.cell_type == "code"]
  assert stdout[0].split() == ["KERNEL_PYTHON", sys.executable], stdout[0]
  lines = [l for l in stdout[-1].splitlines() if l.startswith(MARKER)]
  assert len(lines) == 1, f"the last cell printed no {MARKER.strip()} line: {stdout[-1]!r}"
  return json.loads(lines[0][len(MARKER):]), "".join(stdout), seconds, cpu


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _files_exist(result: dict, cwd: pathlib.Path, *must: str) -> None:
  files = result["files"]
  for f in files:
    assert (cwd / f).exists(), f"{f} is listed but does not exist"
  for suffix in must:
    assert any(f.endswith(suffix) for f in files), f"no {suffix} among {files}"


def check_01_quickstart(r, out, cwd):
  assert r["test_accuracy"] > 0.9, r
  assert r["best_val_accuracy"] > 0.9, r
  assert r["cifar10_mock"] is True and r["cifar10_test_examples"] == 256, r
  assert 0.0 <= r["cifar10_test_accuracy"] <= 1.0
  assert 1e-3 <= r["lr_find_suggestion"] <= 0.03, r  # adam's 3e-3 trains it to > 0.9
  _files_exist(r, cwd, "curves.png", "confusion_matrix.png", "results.json",
               "digits_lr_find.png")


def check_02_text_rnn(r, out, cwd):
  # The best checkpoint, reloaded, reproduces its recorded validation accuracy from raw text.
  assert abs(r["predictor_val_accuracy"] - r["best_val_accuracy"]) < 1e-6, r
  assert r["val_examples"] == (872 if r["source"] == "local" else 512), r
  if r["source"] == "local":   # real SST-2 dev sentences: a meaningful bar
    assert r["best_val_accuracy"] > 0.70, r
    assert r["shown_correct"] >= 3 and r["shown_wrong"] >= 3, r
  else:
    assert r["source"] == "mock", r
  _files_exist(r, cwd, "results.json")


def check_03_checkpoints_inference(r, out, cwd):
  assert f"resumed from step {r['resumed_from_step']}" in out
  assert r["resumed_from_step"] > 0 and r["final_step"] == 2 * r["resumed_from_step"], r
  assert r["resumed_equals_uninterrupted"] is True, r
  assert r["png_equals_array_predictions"] is True, r
  assert r["png_accuracy"] >= 0.75, r
  assert r["export_max_abs_diff"] < 1e-6, r
  assert r["text_predictions"] == r["text_expected"], r
  # fine-tuned to odd/even on the frozen digits features, with a fresh head
  assert r["parity_frozen_unchanged"] is True and r["parity_test_accuracy"] > 0.9, r
  assert "head/kernel: 0 of 2 classes taken from the checkpoint's by name" in out
  _files_exist(r, cwd, ".png", ".jax", "metrics.jsonl")


def check_04_many_devices(r, out, cwd):
  assert r["device_count"] == 8, r
  assert r["test_accuracy"]["pmap"] > 0.9 and r["test_accuracy"]["mesh"] > 0.9, r
  assert r["max_param_diff_pmap_vs_mesh"] < 1e-4, r
  assert [row["devices"] for row in r["scaling"]] == [1, 2, 4, 8], r
  assert all(row["examples_per_s"] > 0 for row in r["scaling"]), r
  _files_exist(r, cwd)


def check_05_cnn_vs_rnn_vs_crnn(r, out, cwd):
  rows = {(row["task"], row["model"]): row for row in r["rows"]}
  assert set(rows) == {("mnist1d", m) for m in ("conv1d", "rnn (gru)", "crnn")} | \
      {("digits", m) for m in ("simple_cnn", "rnn (gru)", "crnn")}, sorted(rows)
  for row in rows.values():
    assert row["params"] > 0 and row["seconds"] > 0, row
  accuracy = {key: row["test_accuracy"] for key, row in rows.items()}
  # FAST trains a few epochs: the convnets are near their final accuracy, the MNIST-1D GRU
  # is not (chance is 0.1).
  assert accuracy[("digits", "simple_cnn")] > 0.9, accuracy
  assert min(v for (task, _), v in accuracy.items() if task == "digits") > 0.8, accuracy
  assert accuracy[("mnist1d", "conv1d")] > 0.9, accuracy
  assert accuracy[("mnist1d", "crnn")] > 0.8, accuracy
  assert accuracy[("mnist1d", "rnn (gru)")] > 0.3, accuracy
  _files_exist(r, cwd, ".png")


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_notebook_is_checked():
  assert [p.stem for p in NOTEBOOKS] == sorted(CHECKS), "a notebook without checks, or the reverse"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook(path, tmp_path, kernel_env, monkeypatch, record_property):
  result, out, seconds, cpu = run_notebook(path, tmp_path, *kernel_env, monkeypatch)
  record_property("seconds", round(seconds, 1))
  record_property("kernel_cpu_seconds", round(cpu, 1))
  print(f"{path.name}: {seconds:.1f} s wall, {cpu:.1f} s kernel CPU; {json.dumps(result)}")
  CHECKS[path.stem](result, out, tmp_path)
