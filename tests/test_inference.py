"""Inference: load() anywhere, raw inputs, bucketed batch sizes, CLI, jax.export artifacts.

The models are trained here on the test process's 8 host devices, under pmap and
under a mesh; the honest check that a checkpoint restores on one device runs in a
child process that only has one.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import jax
import numpy as np
import pytest

import flaxnets
from flaxnets import cli, inference
from flaxnets.training.checkpoint import CheckpointError

# A tiny VGG (conv-BN-relu): batch statistics are part of what must be restored.
SMALL = {"num_epochs": 1, "batch_size": 32, "progress": False, "log_every_steps": 100,
         "model.name": "vgg", "model.stage_features": (8, 16), "model.convs_per_stage": 1}


def small_config(**overrides: Any):
  config = flaxnets.get_config()
  for key, value in {**SMALL, **overrides}.items():
    node = config
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    node[last] = value
  return config


def child_env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  return env


def run_python(code: str, *args: str, devices: int = 1) -> str:
  proc = subprocess.run([sys.executable, "-c", code, *args], env=child_env(devices),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[pathlib.Path, Any]]:
  """One epoch of the tiny VGG on digits under pmap and under mesh, 8 devices each."""
  out = {}
  for strategy in ("pmap", "mesh"):
    workdir = tmp_path_factory.mktemp(strategy)
    result = flaxnets.train(small_config(**{"parallel.strategy": strategy}), str(workdir))
    out[strategy] = (workdir, result)
  return out


@pytest.fixture(scope="module")
def test_images(runs) -> np.ndarray:
  return runs["mesh"][1].dataset.test["inputs"]  # float32 [360, 8, 8, 1], values 0..240


# ---- acceptance 4: params-only restore on one device ------------------------------------------
RESTORE_ON_ONE_DEVICE = r"""
import sys, numpy as np, jax, flaxnets
assert jax.device_count() == 1, jax.devices()
x = np.load(sys.argv[1])
for workdir, out in zip(sys.argv[2::2], sys.argv[3::2]):
  np.save(out, flaxnets.load(workdir, step="latest").predict_proba(x))
print("ok")
"""


def test_restore_on_one_device_gives_identical_predictions(tmp_path, runs, test_images):
  np.save(tmp_path / "x.npy", test_images)
  args, here = [], {}
  for strategy, (workdir, result) in runs.items():
    predictor = flaxnets.load(workdir, step="latest")
    # The checkpoint holds exactly the final training state ...
    assert jax.tree.all(jax.tree.map(np.array_equal, predictor.params, result.state.params))
    assert jax.tree.all(jax.tree.map(np.array_equal, predictor.batch_stats,
                                     result.state.batch_stats))
    assert predictor.batch_stats  # (VGG has batch norm: the statistics came back too)
    here[strategy] = predictor.predict_proba(test_images)
    args += [str(workdir), str(tmp_path / f"{strategy}.npy")]
  # ... and a process with one CPU device restores it and predicts the same.
  assert run_python(RESTORE_ON_ONE_DEVICE, str(tmp_path / "x.npy"), *args).strip() == "ok"
  for strategy, proba in here.items():
    # Same program, same CPU code, other device count: bit-identical.
    np.testing.assert_array_equal(np.load(tmp_path / f"{strategy}.npy"), proba)
  # The model learned something (so identical predictions are not trivially constant).
  labels = runs["mesh"][1].dataset.test["labels"]
  assert (here["mesh"].argmax(-1) == labels).mean() > 0.3


# ---- acceptance 7: export, reload in a fresh process without flaxnets ----------------------
RUN_EXPORTED = r"""
import sys, json, numpy as np, jax
from jax import export
exported = export.deserialize(open(sys.argv[1], "rb").read())
info = json.loads(open(sys.argv[1] + ".json").read())
for x_file, out in zip(sys.argv[2::2], sys.argv[3::2]):
  x = np.load(x_file).astype(info["inputs"][0]["dtype"])
  np.save(out, np.asarray(exported.call(x)))
assert not any(m == "flaxnets" or m.startswith("flaxnets.") for m in sys.modules)
print("ok")
"""


def test_exported_artifact_matches_predictor_in_fresh_process(tmp_path, runs, test_images):
  predictor = flaxnets.load(runs["pmap"][0], step="best")
  path = predictor.export(tmp_path / "model.jax")
  info = json.loads(pathlib.Path(str(path) + ".json").read_text())
  assert info["label_names"] == predictor.label_names
  assert info["inputs"][0]["shape"] == ["batch", 8, 8, 1]
  args = []
  for n in (1, 7, 300):  # the batch dimension is symbolic: any size runs
    np.save(tmp_path / f"x{n}.npy", test_images[:n])
    args += [str(tmp_path / f"x{n}.npy"), str(tmp_path / f"p{n}.npy")]
  assert run_python(RUN_EXPORTED, str(path), *args).strip() == "ok"
  for n in (1, 7, 300):
    np.testing.assert_allclose(np.load(tmp_path / f"p{n}.npy"),
                               predictor.predict_proba(test_images[:n]), rtol=0, atol=1e-6)


# ---- raw inputs --------------------------------------------------------------------------------
@pytest.fixture
def predictor(runs) -> inference.Predictor:
  """A fresh Predictor (an empty compilation cache) of the mesh run's best step."""
  return flaxnets.load(runs["mesh"][0], step="best")


def test_uint8_inputs_of_varying_batch_sizes_reuse_bucketed_compilations(predictor,
                                                                          test_images):
  as_uint8 = test_images.astype(np.uint8)  # digits are integers 0..240: exact in uint8
  want = predictor.predict_proba(test_images)
  sizes = [1, 3, 8, 9, 31, 33, 100, 129, 360, 0, 5, 2]
  for n in sizes:
    got = predictor.predict_proba(as_uint8[:n])
    assert got.shape == (n, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[:n], rtol=0, atol=1e-6)
  assert predictor.predict(as_uint8[0]).shape == (1,)  # one example without a batch axis
  over = np.concatenate([as_uint8] * 2)  # 720 > the largest bucket: split into chunks
  np.testing.assert_allclose(predictor.predict_proba(over), np.concatenate([want] * 2),
                             rtol=0, atol=1e-6)
  assert predictor._predict._cache_size() <= len(inference.BATCH_BUCKETS)
  labels = predictor.predict_labels(as_uint8[:4])
  assert labels == [predictor.label_names[i] for i in want[:4].argmax(-1)]


def write_pngs(folder: pathlib.Path, images: np.ndarray) -> list[str]:
  from PIL import Image
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for i, img in enumerate(images):
    path = folder / f"digit{i}.png"
    Image.fromarray(img[..., 0].astype(np.uint8), mode="L").save(path)
    paths.append(str(path))
  return paths


def test_predict_on_image_files(tmp_path, predictor, test_images):
  from PIL import Image
  paths = write_pngs(tmp_path, test_images[:6])
  want = predictor.predict_proba(test_images[:6])
  np.testing.assert_allclose(predictor.predict_proba(paths), want, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(predictor.predict(pathlib.Path(paths[0])), want[:1].argmax(-1))
  # Another size and colour mode: converted to grey and resized to the model's 8x8.
  big = tmp_path / "rgb.png"
  Image.fromarray(np.zeros((16, 16, 3), np.uint8), mode="RGB").save(big)
  assert predictor.predict_proba([str(big)]).shape == (1, 10)


def test_bad_inputs_get_one_clear_error(tmp_path, predictor):
  missing = tmp_path / "nope.png"
  with pytest.raises(FileNotFoundError, match=f"image file '{missing}' does not exist"):
    predictor.predict([str(missing)])
  not_image = tmp_path / "notes.png"
  not_image.write_text("not an image")
  with pytest.raises(ValueError, match=f"cannot read image '{not_image}'"):
    predictor.predict([str(not_image)])
  with pytest.raises(ValueError, match=r"inputs of shape \(2, 8, 9, 1\): expected "
                                       r"\[batch, 8, 8, 1\]"):
    predictor.predict(np.zeros((2, 8, 9, 1), np.uint8))


# ---- load() ---------------------------------------------------------------------------------------
def test_load_steps_and_clear_errors(tmp_path, runs):
  workdir = runs["mesh"][0]
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
  assert flaxnets.load(workdir, step="latest").path == workdir / "checkpoints" / str(steps[-1])
  assert flaxnets.load(workdir, step=steps[0]).path.name == str(steps[0])
  assert flaxnets.load(workdir, step=str(steps[0])).path.name == str(steps[0])
  with pytest.raises(FileNotFoundError, match=rf"step 99999 not found .* saved steps: "
                                              rf"\[{steps[0]}"):
    flaxnets.load(workdir, step=99999)
  with pytest.raises(ValueError, match=r"step='newest': expected 'best', 'latest' or a step"):
    flaxnets.load(workdir, step="newest")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    flaxnets.load(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoints in"):
    flaxnets.load(tmp_path / "empty")


def test_load_of_damaged_step_names_its_path(tmp_path, runs):
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(runs["mesh"][0], workdir)
  step_dir = workdir / "checkpoints" / "39"
  (step_dir / "state" / "manifest.ocdbt").unlink()
  # best/ holds the same step: its intact copy loads, with a warning naming the damage
  with pytest.warns(UserWarning, match=f"checkpoint {step_dir} is damaged.*loaded the same "
                                       f"step's copy in {workdir / 'best' / '39'} instead"):
    assert flaxnets.load(workdir, step=39).path == workdir / "best" / "39"
  shutil.rmtree(workdir / "best")
  with pytest.raises(CheckpointError, match=f"checkpoint {step_dir} is damaged"):
    flaxnets.load(workdir, step=39)


def test_load_takes_the_newer_step_when_a_run_prunes_the_one_it_read(tmp_path, runs,
                                                                     monkeypatch):
  """A run that saves a new step deletes the oldest (max_to_keep) or the previous best:
  load() had reported that step, read mid-deletion, as damaged and said to retrain."""
  import shutil
  from flaxnets import inference
  workdir = tmp_path / "run"
  shutil.copytree(runs["mesh"][0], workdir)
  load_step, read = inference._load_step, []

  def pruned_while_read(step_dir):
    read.append(step_dir)
    if len(read) == 1:  # the run saves step 40 (best) and prunes 39 under the reader
      shutil.copytree(step_dir, step_dir.with_name("40"))
      shutil.rmtree(step_dir)
    return load_step(step_dir)

  monkeypatch.setattr(inference, "_load_step", pruned_while_read)
  assert flaxnets.load(workdir).path == workdir / "best" / "40"
  assert read == [workdir / "best" / "39", workdir / "best" / "40"]


# ---- CLI -------------------------------------------------------------------------------------------
def test_cli_predict_prints_labels_and_probabilities(tmp_path, runs, predictor, test_images,
                                                     capsys):
  paths = write_pngs(tmp_path, test_images[:3])
  np.save(tmp_path / "more.npy", test_images[3:5])
  capsys.readouterr()
  assert cli.main(["predict", str(runs["mesh"][0]), "--top", "2", *paths]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  want = predictor.predict_labels(test_images[:3])
  assert len(lines) == 3
  for line, path, label in zip(lines, paths, want):
    name, predicted, probs = line.split("\t")
    assert (name, predicted) == (path, label)
    tops = probs.split(", ")
    assert len(tops) == 2 and tops[0].startswith(f"{label}=")
    assert all(0.0 <= float(t.split("=")[1]) <= 1.0 for t in tops)
  assert cli.main(["predict", str(runs["mesh"][0]), str(tmp_path / "more.npy")]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [l.split("\t")[1] for l in lines] == predictor.predict_labels(test_images[3:5])


# ---- text ------------------------------------------------------------------------------------------
def test_text_model_predicts_raw_strings(tmp_path):
  from flaxnets.data import text
  if not (hasattr(text.Vocabulary, "from_dict") and hasattr(text.Vocabulary, "to_dict")):
    pytest.skip("Vocabulary.to_dict()/from_dict() do not exist yet: checkpoints cannot "
                "carry a vocabulary, so a text model cannot be restored for inference")
  rng = np.random.default_rng(0)
  good, bad = ["great", "fine", "lovely", "superb"], ["awful", "poor", "dull", "bad"]
  rows = []
  for i in range(256):
    label = i % 2
    words = list(rng.choice(good if label else bad, 3)) + ["movie", "plot"]
    rng.shuffle(words)
    rows.append(f"{label}\t{' '.join(words)}")
  folder = tmp_path / "reviews"
  folder.mkdir()
  (folder / "train.tsv").write_text("label\tsentence\n" + "\n".join(rows) + "\n")
  config = small_config(**{"dataset.name": "text_table", "dataset.path": str(folder),
                           "model.name": "text_cnn", "model.embed_dim": 16,
                           "model.features": 8, "model.dropout": 0.0, "num_epochs": 8,
                           "dataset.test_split": ""})
  for key in ("stage_features", "convs_per_stage"):
    del config.model[key]
  workdir = tmp_path / "run"
  flaxnets.train(config, str(workdir))
  predictor = flaxnets.load(workdir)
  texts = ["a great lovely movie", "dull awful plot", "superb", "words never seen before"]
  assert predictor.predict_labels(texts)[:3] == ["1", "0", "1"]
  ids, lengths = predictor.vocab.encode(texts, predictor.input_shape[0])
  np.testing.assert_array_equal(predictor.predict(ids), predictor.predict(texts))
  # a list of id lists is ids, not texts (it was read as strings: every token <unk>)
  np.testing.assert_array_equal(predictor.predict_proba(ids.tolist()),
                                predictor.predict_proba(ids))
  with pytest.raises(ValueError, match="a list of float64 values; expected text strings"):
    predictor.predict([[0.5, 1.5]])
  # bytes first: numpy had made the list '<U11' and called it "not text strings"
  for mixed, i in (([b"dull", "a great movie"], 0), (["a great movie", b"dull"], 1)):
    with pytest.raises(ValueError, match=rf"inputs\[{i}\] of type bytes: expected text "
                                         r"strings \(decode bytes first"):
      predictor.predict(mixed)


def test_load_accepts_a_relative_workdir(tmp_path, monkeypatch):
  """README and notebooks use relative workdirs; Orbax itself only takes absolute paths."""
  import flaxnets
  monkeypatch.chdir(tmp_path)
  config = flaxnets.get_config()
  config.progress = False
  config.num_epochs = 1
  config.parallel.strategy = "single"
  flaxnets.train(config, workdir="runs/x")
  predictor = flaxnets.load("runs/x")
  assert predictor.predict(np.zeros((2, 8, 8, 1), np.float32)).shape == (2,)
