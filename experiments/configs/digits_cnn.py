"""SimpleCNN on scikit-learn's digits (1,797 real 8x8 images): the default job.

Run:      flaxnets train --config experiments/configs/digits_cnn.py
          (same as plain `flaxnets train`)
Runtime:  see experiments/results/RESULTS.md (2-core CPU)
Result:   see experiments/results/RESULTS.md
"""
import flaxnets


def get_config():
  return flaxnets.get_config()
