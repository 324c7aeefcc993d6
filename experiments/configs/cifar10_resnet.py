"""ResNet-20 on CIFAR-10 from the JPEG copy in ../shared/data/cifar10_jpg.

ResNet-20 of He et al. (2016) with a common modern CIFAR recipe: SGD with Nesterov
momentum 0.9, lr 0.1 (linear warmup over the first epoch, then cosine decay), weight
decay 5e-4 (coupled, as SGD recipes use it; biases and BN scales excluded), batch 128,
random crop after 4-pixel padding and horizontal flips. (He et al. used plain momentum,
weight decay 1e-4 and a step schedule: 91.25% test after 164 epochs.) Validation is a
seeded, stratified 10% of the 50,000 training images; test is the 10,000.

TFDS variant (needs a prepared copy: flaxnets.data.tfds_source.prepare_tfds('cifar10')):
    --set dataset.name='tfds:cifar10' dataset.path=''
(python experiments/run.py form; with `flaxnets train` use --config.dataset.name=...).

Run:      flaxnets train --config experiments/configs/cifar10_resnet.py   (from the repo root)
Seeds:    python experiments/run.py experiments/configs/cifar10_resnet.py --seeds 0 1 2
Runtime:  not trained to completion on this CPU. Checked 2026-11-27 on a shared, loaded
          2-core CPU (1 device) with `flaxnets train --config ... --config.num_epochs=1`
          stopped by `timeout 420`: data loaded (45,000 / 5,000 / 10,000) and compiled in
          about 40 s, then 348 of the epoch's 351 steps in 6 min 39 s (0.7-2 s/step,
          70-180 examples/s), training loss 2.22 at step 100 and 1.72-1.83 from step 200.
          Estimate: about 7 min per epoch here, 11-12 h for the 100 epochs; a GPU needs
          a few seconds per epoch.
Result:   not measured (ResNet-20 reaches 91.25% test accuracy in He et al. 2016).
"""
import flaxnets


def get_config():
  c = flaxnets.get_config()
  c.dataset.name = "image_folder"           # variant: "tfds:cifar10" (path unused)
  c.dataset.path = "../shared/data/cifar10_jpg"   # relative to the repository root
  c.dataset.train_split = "train"           # train.tar.gz, read without unpacking
  c.dataset.val_split = ""                  # carve val_fraction of train, seeded
  c.dataset.val_fraction = 0.1
  c.dataset.test_split = "test"
  c.model.name = "resnet20"
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.num_epochs = 100
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 100
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_epochs = 1.0
  c.checkpoint.every_steps = 1000           # long runs: survive preemption mid-epoch
  return c
