"""Fine-tuning: config.init starts a run from another run's weights; config.optimizer.freeze
keeps weights untrained."""
import json
import pathlib
import shutil

import jax
import numpy as np
import flax
import optax
import pytest
from flax import traverse_util

import flaxnets
from flaxnets.config import ConfigError
from flaxnets.data import sources
from flaxnets.models import registry
from flaxnets.training import finetune, steps
from flaxnets.training.loop import build_model
from flaxnets.training.state import create_state, dummy_inputs

from helpers import quiet_config

SMALL = {"model.features": (8, 16), "model.hidden": 32}


def flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A SimpleCNN trained 3 epochs on digits, in a workdir."""
  workdir = tmp_path_factory.mktemp("source")
  result = flaxnets.train(quiet_config(num_epochs=3, **SMALL), workdir=str(workdir))
  assert result.test_metrics["accuracy"] > 0.85
  return workdir, result


def fresh_variables(config, data=None):
  dataset = sources.load_dataset(config.dataset, data)
  model = build_model(config, dataset)
  state = create_state(model, optax.sgd(0.1), jax.random.PRNGKey(config.seed),
                       dataset.input_shape, dataset.input_kind)
  return {"params": state.params, "batch_stats": state.batch_stats}, dataset


def test_init_copies_every_array_of_the_checkpoint_bit_for_bit(source):
  workdir, _ = source
  config = quiet_config(**SMALL)
  variables, dataset = fresh_variables(config)
  src = finetune.read(str(workdir), "best")
  merged, notes = finetune.merge(variables, src, "", dataset.label_names, None, str(workdir))
  loaded = flaxnets.load(workdir)
  assert flat(merged["params"]).keys() == flat(loaded.params).keys()
  for key, value in flat(loaded.params).items():
    np.testing.assert_array_equal(flat(merged["params"])[key], value)
    assert flat(merged["params"])[key].dtype == value.dtype
  assert notes == ["8 of 8 arrays from the checkpoint"]
  # step 'latest' and a step number read those checkpoints
  latest = flaxnets.load(workdir, "latest")
  assert finetune.read(str(workdir), "latest").step == int(latest.path.name)
  assert finetune.read(str(workdir), latest.path.name).step == int(latest.path.name)
  # config.init.step takes the number itself too
  config = quiet_config(**{"init.workdir": str(workdir)})
  config.init.step = int(latest.path.name)
  assert flaxnets.config.validate(config).init.step == latest.path.name
  for bad in (-3, True, 2.5):
    config.init.step = bad
    with pytest.raises(ConfigError, match=rf"config.init.step={bad!r}: expected 'best', "
                                          r"'latest' or a step number such as 1200"):
      flaxnets.config.validate(config)


def test_a_fine_tuned_run_starts_where_the_source_ended(source):
  workdir, result = source
  # At a learning rate that barely moves the weights, one epoch keeps the source's
  # accuracy when it starts from them, and stays near chance from a fresh start.
  changes = dict(num_epochs=1, **{"optimizer.learning_rate": 1e-7}, **SMALL)
  tuned = flaxnets.train(quiet_config(**changes, **{"init.workdir": str(workdir)}))
  fresh = flaxnets.train(quiet_config(**changes))
  best = flaxnets.load(workdir).evaluate("test")["accuracy"]
  assert abs(tuned.test_metrics["accuracy"] - best) < 0.02
  assert fresh.test_metrics["accuracy"] < 0.4
  assert json.loads(json.dumps(tuned.config.init.to_dict()))["workdir"] == str(workdir)


@pytest.mark.parametrize("strategy", ["single", "pmap", "mesh"])
def test_frozen_weights_keep_their_values_and_the_rest_train(source, strategy):
  workdir, _ = source
  # adamw's decoupled weight decay would move every weight, gradient or not
  config = quiet_config(num_epochs=3, **SMALL, **{
      "init.workdir": str(workdir), "init.skip": "^head/", "optimizer.freeze": "^(?!head/)",
      "optimizer.name": "adamw", "optimizer.weight_decay": 0.1,
      "parallel.strategy": strategy, "batch_size": 64})
  result = flaxnets.train(config)
  start = flat(flaxnets.load(workdir).params)
  end = flat(result.state.params)
  for key in start:
    if key.startswith("head/"):
      assert not np.array_equal(end[key], start[key]), key
    else:
      np.testing.assert_array_equal(end[key], start[key], err_msg=key)
  # a new head on the frozen features of the source learns the task
  assert result.test_metrics["accuracy"] > 0.85


def test_freezing_drops_the_frozen_weights_gradient_work():
  config = quiet_config(**SMALL)
  variables, dataset = fresh_variables(config)
  model = build_model(config, dataset)
  state = create_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), dataset.input_shape,
                       dataset.input_kind)
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.normal(size=(32, *dataset.input_shape)).astype(np.float32),
           "labels": rng.integers(0, 10, 32).astype(np.int32)}

  def flops(freeze):
    step = steps.make_train_step(num_classes=10, stats={}, schedule=optax.constant_schedule(
        0.1), freeze=freeze)
    cost = jax.jit(step).lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"]

  # with both convolutions frozen no gradient is needed below the dense layers: the
  # convolutions' backward pass is gone from the compiled step
  assert flops("^Conv_") < 0.8 * flops("")
  step = jax.jit(steps.make_train_step(
      num_classes=10, stats={}, schedule=optax.constant_schedule(0.1), freeze="^Conv_"))
  new_state, _ = step(state, batch)
  for key, value in flat(state.params).items():
    same = np.array_equal(flat(new_state.params)[key], value)
    assert same == key.startswith("Conv_"), key
  # params held in a FrozenDict (older Flax's init) freeze the same
  frozen_dict = state.replace(params=flax.core.freeze(state.params),
                              opt_state=optax.sgd(0.1).init(flax.core.freeze(state.params)))
  again, _ = step(frozen_dict, batch)
  jax.tree.map(np.testing.assert_array_equal, flax.core.unfreeze(again.params),
               new_state.params)


@pytest.mark.parametrize("name", sorted(registry.MODELS))
def test_every_model_names_its_embedding_and_head_as_fine_tuning_expects(name):
  """The axes matched by name: each token model's one embedding [vocab, features], and
  every model's top-level head [..., classes]."""
  cls = registry.MODELS[name]
  kinds = getattr(cls, "input_kinds", ("image", "series", "tokens"))
  kind = "tokens" if "tokens" in kinds else kinds[0]
  fields = registry.model_fields(name)
  kwargs = {k: v for k, v in {"num_classes": 3, "vocab_size": 37}.items() if k in fields}
  model = registry.build_model(name, **kwargs)
  shape = {"tokens": (12,), "series": (12, 2), "image": (16, 16, 3)}[kind]
  x, lengths = dummy_inputs(shape, kind)
  params = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0),
                                              "dropout": jax.random.PRNGKey(0)}, x, lengths,
                                             train=False))["params"]
  leaves = flat(params)
  embeddings = [p for p in leaves if finetune._named_axis(p, True) == 0]
  heads = {p: leaves[p].shape for p in leaves if finetune._named_axis(p, False) == -1}
  classes = 37 if "lm" in getattr(cls, "tasks", ()) else 3
  assert heads["head/kernel"][-1] == classes
  assert heads.pop("head/bias", (classes,)) == (classes,)  # fast_cnn's head has no bias
  assert set(heads) == {"head/kernel"}
  if kind == "tokens":
    assert len(embeddings) == 1 and leaves[embeddings[0]].shape[0] == 37, embeddings
  else:
    assert embeddings == []


def test_head_outputs_follow_the_class_names(source, tmp_path):
  workdir, _ = source
  digits = sources.load_dataset(quiet_config().dataset)
  # classes '7', 'new', '3': two the source knows, one it does not
  picked = np.isin(digits.train["labels"], [3, 7])
  x, y = digits.train["inputs"][picked], digits.train["labels"][picked]
  y = np.where(y == 7, 0, 2)
  x = np.concatenate([x, x[:10]])
  y = np.concatenate([y, np.ones(10, y.dtype)])
  data = {"train": (x, y), "label_names": ["7", "new", "3"]}
  config = quiet_config(**SMALL, **{"dataset.name": "arrays"})
  variables, dataset = fresh_variables(config, data)
  assert dataset.label_names == ["7", "new", "3"]
  src = finetune.read(str(workdir), "best")
  merged, notes = finetune.merge(variables, src, "", dataset.label_names, None, str(workdir))
  old = flat(flaxnets.load(workdir).params)
  new, before = flat(merged["params"]), flat(variables["params"])
  np.testing.assert_array_equal(new["head/kernel"][:, [0, 2]], old["head/kernel"][:, [7, 3]])
  np.testing.assert_array_equal(new["head/bias"][[0, 2]], old["head/bias"][[7, 3]])
  np.testing.assert_array_equal(new["head/kernel"][:, 1], before["head/kernel"][:, 1])
  np.testing.assert_array_equal(new["Conv_0/kernel"], old["Conv_0/kernel"])
  assert "head/kernel: 2 of 3 classes taken from the checkpoint's by name" in notes


def test_embedding_rows_follow_the_tokens():
  def src_arrays(v, e):
    return {"params": {"embed/embedding": np.arange(v * e, dtype=np.float32).reshape(v, e),
                       "rnn/kernel": np.full((e, 4), 7.0, np.float32),
                       "head/kernel": np.arange(4 * 3, dtype=np.float32).reshape(4, 3),
                       "head/bias": np.arange(3, dtype=np.float32)}}

  source = finetune.Source(path=pathlib.Path("/src/best/9"), step=9,
                           arrays=src_arrays(5, 2), label_names=["neg", "pos", "mid"],
                           tokens=["<pad>", "<unk>", "a", "b", "c"])
  fresh = {"params": {"embed": {"embedding": -np.ones((6, 2), np.float32)},
                      "rnn": {"kernel": np.zeros((2, 4), np.float32)},
                      "head": {"kernel": -np.ones((4, 3), np.float32),
                               "bias": -np.ones(3, np.float32)}}}
  merged, notes = finetune.merge(fresh, source, "", ["neg", "pos", "mid"],
                                 ["<pad>", "<unk>", "c", "z", "a", "y"], "/src")
  emb = merged["params"]["embed"]["embedding"]
  src_emb = source.arrays["params"]["embed/embedding"]
  np.testing.assert_array_equal(emb[[0, 1, 2, 4]], src_emb[[0, 1, 4, 2]])
  np.testing.assert_array_equal(emb[[3, 5]], -np.ones((2, 2)))  # unseen tokens stay fresh
  np.testing.assert_array_equal(merged["params"]["head"]["kernel"],
                                source.arrays["params"]["head/kernel"])
  assert "embed/embedding: 4 of 6 tokens taken from the checkpoint's by name" in notes
  # one with no vocabulary (token ids given as arrays) keeps positions, so must fit
  with pytest.raises(ConfigError, match=r"params embed/embedding: shape \(5, 2\) in the "
                                        r"checkpoint, \(6, 2\) in this model"):
    finetune.merge(fresh, source, "", ["neg", "pos", "mid"], None, "/src")


def test_what_does_not_fit_is_listed_and_skip_leaves_it_fresh(source):
  workdir, _ = source
  with pytest.raises(ConfigError) as err:
    flaxnets.train(quiet_config(num_epochs=1, **{"model.features": (8, 24),
                                                 "model.hidden": 32,
                                                 "init.workdir": str(workdir)}))
  message = str(err.value)
  assert message.startswith(f"config.init.workdir={str(workdir)!r}: its checkpoint")
  assert "(its settings: model.features: checkpoint [8, 16] vs now [8, 24])" in message
  assert "params Conv_1/kernel: shape (3, 3, 8, 16) in the checkpoint, (3, 3, 8, 24) in " \
         "this model" in message
  assert "config.init.skip" in message and "\n" not in message
  # skipping them trains: the second conv and the dense layer above it start fresh
  result = flaxnets.train(quiet_config(num_epochs=1, **{
      "model.features": (8, 24), "model.hidden": 32, "init.workdir": str(workdir),
      "init.skip": "^(Conv_1|Dense_0)/"}))
  assert result.test_metrics["accuracy"] > 0.5
  # another model altogether: named, with the first of its arrays missing from the
  # checkpoint
  with pytest.raises(ConfigError, match=r"\(a 'simple_cnn' model's, and this one is "
                                        r"'resnet20'\); 112 arrays differ: params "
                                        r"BasicBlock_0/BatchNorm_0/bias \(16,\): not in the "
                                        r"checkpoint;"):
    flaxnets.train(quiet_config(num_epochs=1, **{
        "model.name": "resnet20", "init.workdir": str(workdir)}))
  # a checkpoint array this model lacks is named too
  src = finetune.read(str(workdir), "best")
  src.arrays["params"]["extra/kernel"] = np.zeros((2, 2), np.float32)
  variables, dataset = fresh_variables(quiet_config(**SMALL))
  with pytest.raises(ConfigError, match=r"1 arrays differ: params extra/kernel \(2, 2\): in "
                                        r"the checkpoint, not in this model"):
    finetune.merge(variables, src, "", dataset.label_names, None, str(workdir))
  merged, notes = finetune.merge(variables, src, "^extra/", dataset.label_names, None,
                                 str(workdir))
  assert notes == ["8 of 8 arrays from the checkpoint"]


def test_a_resume_does_not_read_init_again(source, tmp_path, capsys):
  workdir, _ = source
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  run = tmp_path / "run"
  flaxnets.train(quiet_config(num_epochs=1, **SMALL, **{"init.workdir": str(copy)}),
                 workdir=str(run))
  shutil.rmtree(copy)  # gone: the resume trains on from its own checkpoint
  capsys.readouterr()
  result = flaxnets.train(quiet_config(num_epochs=2, **SMALL, **{
      "init.workdir": str(copy), "init.skip": "head"}), workdir=str(run))
  out = capsys.readouterr().out
  assert "config.init.workdir is not read: the run resumes from its own checkpoint" in out
  # the changed settings listed are those that apply from the resume on
  assert "  num_epochs: 1 -> 2" in out
  assert "init.skip: " not in out and "init.workdir: " not in out
  assert [h["epoch"] for h in result.history if h["split"] == "train"] == [1, 2]
  # results.json says which checkpoint the run started from, after the resume too
  started = json.loads((run / "results.json").read_text())["initialised_from"]
  best = flaxnets.load(workdir).path
  assert started == {"path": str(copy / "best" / best.name), "step": int(best.name),
                     "notes": ["8 of 8 arrays from the checkpoint"]}


def test_bad_init_and_freeze_settings_are_refused_before_anything_is_touched(source,
                                                                              tmp_path):
  workdir, _ = source
  own = tmp_path / "own"
  flaxnets.train(quiet_config(num_epochs=1, **SMALL), workdir=str(own))
  before = sorted(p.relative_to(own) for p in own.rglob("*"))
  step = next((own / "checkpoints").iterdir()).name
  cases = [
      ({"init.workdir": str(tmp_path / "nowhere")}, r"config.init.workdir=.*nowhere.*"
                                                    r"does not exist"),
      # a source that does not fit is found before a restart deletes this run's steps
      ({"model.hidden": 48, "init.workdir": str(workdir)}, r"does not fit this model"),
      ({"model.hidden": 48, "init.workdir": str(workdir), "checkpoint.enabled": False},
       r"does not fit this model"),
      ({"init.workdir": str(workdir), "init.skip": "haed"}, r"config.init.skip='haed': "
                                                            r"matches no weight"),
      ({"init.workdir": str(own / "checkpoints" / step)},
       rf"a step folder; expected the run's workdir, '{own}', with config.init.step='{step}'"),
      ({"init.workdir": str(workdir), "init.step": "99999"}, r"step 99999 not found"),
      ({"init.workdir": str(own)}, r"that is this run's own workdir"),
      ({"init.workdir": str(workdir), "init.step": "first"},
       r"config.init.step='first': expected 'best', 'latest' or a step number such as 1200"),
      ({"init.workdir": str(workdir), "init.skip": "head("}, r"config.init.skip='head\(': "
                                                             r"not a regular expression"),
      ({"init.skip": "head"}, r"config.init.skip='head': only read with config.init.workdir"),
      ({"init.workdir": "  "}, r"config.init.workdir='  ': expected a run's folder"),
      ({"optimizer.freeze": "conv["}, r"config.optimizer.freeze='conv\[': not a regular"),
  ]
  for changes, message in cases:
    with pytest.raises(ConfigError, match=message):
      flaxnets.train(quiet_config(num_epochs=1, **{**SMALL, **changes}), workdir=str(own),
                     restart=True)
  assert sorted(p.relative_to(own) for p in own.rglob("*")) == before
  # a new workdir is left without checkpoint folders
  with pytest.raises(ConfigError, match=r"does not fit this model"):
    flaxnets.train(quiet_config(num_epochs=1, **{**SMALL, "model.hidden": 48,
                                                 "init.workdir": str(workdir)}),
                   workdir=str(tmp_path / "new"))
  assert not (tmp_path / "new" / "checkpoints").exists()
  # a workdir with best/ steps alone does not resume (they are set aside): init is checked
  # before that
  best_only = tmp_path / "best_only"
  shutil.copytree(own, best_only)
  shutil.rmtree(best_only / "checkpoints")
  with pytest.raises(ConfigError, match=r"nowhere.*does not exist"):
    flaxnets.train(quiet_config(num_epochs=1, **SMALL, **{
        "init.workdir": str(tmp_path / "nowhere")}), workdir=str(best_only))
  assert [p.name for p in (best_only / "best").iterdir()] == [step]
  # freeze patterns that match nothing, or every weight
  for pattern, what in (("^conv", "no"), (".", "every")):
    with pytest.raises(ConfigError) as err:
      flaxnets.train(quiet_config(num_epochs=1, **SMALL, **{"optimizer.freeze": pattern}))
    assert str(err.value).startswith(f"config.optimizer.freeze={pattern!r}: matches {what} "
                                     "weight of this model (Conv_0/bias, Conv_0/kernel")


def test_the_command_line_fine_tunes(source, tmp_path):
  import subprocess
  import sys
  workdir, _ = source
  out = subprocess.run(
      [sys.executable, "-m", "flaxnets.cli", "train", "--workdir", str(tmp_path / "cli"),
       "--config.num_epochs=1", "--config.progress=False", "--config.tensorboard=False",
       "--config.model.features=(8,16)", "--config.model.hidden=32",
       f"--config.init.workdir={workdir}",
       f"--config.init.step={flaxnets.load(workdir).path.name}",  # a number, parsed as one
       "--config.optimizer.freeze=^Conv_"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "initialised from" in out.stdout and "frozen (config.optimizer.freeze='^Conv_'): " \
      "4 of 8 arrays" in out.stdout
  bad = subprocess.run(
      [sys.executable, "-m", "flaxnets.cli", "train", "--workdir", str(tmp_path / "bad"),
       f"--config.init.workdir={tmp_path / 'nowhere'}"], capture_output=True, text=True,
      timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().count("\n") == 0 and "config.init.workdir=" in bad.stderr



def test_unfreezing_at_a_resume_warns_of_adams_shared_step_count(tmp_path, capsys):
  # optax's adam itself: weights whose moments are zero at a shared step count of 500
  tx, params = optax.adam(1.0), np.zeros(2, np.float32)
  update = jax.jit(lambda g, state: tx.update(g, state, params))
  state = tx.init(params)
  for _ in range(500):
    _, state = update(np.zeros(2, np.float32), state)
  peak = 0.0
  for _ in range(1000):
    step, state = update(np.ones(2, np.float32), state)
    peak = max(peak, float(np.abs(step).max()))
  assert peak == pytest.approx(finetune.adam_peak_ratio(500, 0.9, 0.999), rel=1e-3)
  assert finetune.adam_peak_ratio(0, 0.9, 0.999) == pytest.approx(1.0)
  # 157 steps frozen (digits at batch 8), then unfrozen at a resume
  run = tmp_path / "run"
  frozen = {"batch_size": 8, **SMALL, "optimizer.freeze": "^Conv_",
            "parallel.strategy": "single"}  # (8 devices of one example each: only slower)
  flaxnets.train(quiet_config(num_epochs=1, **frozen), workdir=str(run))
  capsys.readouterr()
  flaxnets.train(quiet_config(num_epochs=2, **{**frozen, "optimizer.freeze": ""}),
                 workdir=str(run))
  out = capsys.readouterr().out
  assert "  optimizer.freeze: '^Conv_' -> ''" in out
  assert ("warning: 4 arrays frozen until this resume (step 157) start with adam's moments "
          "near zero but its step count at 157: under a steady gradient their updates would "
          "grow to 2.6x the learning rate") in out
  # sgd has no step count to outrun; lamb's trust ratio rescales each array's update;
  # adam's L2 weight decay fills the frozen arrays' moments; freezing more unfreezes nothing
  for name, decay, freeze in (("sgd", 0.0, ""), ("lamb", 0.0, ""), ("adam", 1e-4, ""),
                              ("adam", 0.0, "^(Conv_|Dense_)")):
    again = tmp_path / f"{name}{decay}{len(freeze)}"
    changes = {**frozen, "optimizer.name": name, "optimizer.weight_decay": decay}
    flaxnets.train(quiet_config(num_epochs=1, **changes), workdir=str(again))
    capsys.readouterr()
    flaxnets.train(quiet_config(num_epochs=2, **{**changes, "optimizer.freeze": freeze}),
                   workdir=str(again))
    out = capsys.readouterr().out
    assert "optimizer.freeze: '^Conv_' -> " in out and "warning:" not in out


@pytest.mark.parametrize("strategy", ["single", "pmap"])
def test_frozen_batch_norm_layers_keep_their_statistics(tmp_path, strategy):
  """As Keras's trainable=False: a frozen batch-norm layer normalises by its running
  statistics while training and leaves them as they are; the others update theirs."""
  small = {"model.name": "resnet20", "model.num_filters": 4, "model.stage_sizes": (1, 1, 1),
           "batch_size": 64, "parallel.strategy": strategy}
  source = tmp_path / "source"
  flaxnets.train(quiet_config(num_epochs=1, **small), workdir=str(source))
  start = flaxnets.load(source)
  stats = flat(start.batch_stats)
  frozen = "^(stem|BatchNorm_0|BasicBlock_0)/"
  result = flaxnets.train(quiet_config(num_epochs=1, **small, **{
      "init.workdir": str(source), "optimizer.freeze": frozen}))
  after = flat(result.state.batch_stats)
  assert sorted(after) == sorted(stats)
  for key, value in stats.items():
    if key.startswith(("BatchNorm_0/", "BasicBlock_0/")):
      np.testing.assert_array_equal(after[key], value, err_msg=key)
    else:
      assert not np.array_equal(after[key], value), key
  # every layer frozen: the training-mode forward pass is the evaluation's, and changes
  # no statistic
  variables = {"params": start.params, "batch_stats": start.batch_stats}
  x = result.dataset.test["inputs"][:16].astype(np.float32)
  model = start.model.clone(bn_axis_name=None)
  with flax.linen.intercept_methods(finetune.frozen_norms("^(?!head/)")):
    logits, updates = model.apply(variables, x, None, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits, model.apply(variables, x, None, train=False),
                             rtol=1e-6, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], start.batch_stats)
