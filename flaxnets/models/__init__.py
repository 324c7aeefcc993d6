"""Models, found by name: `registry.build_model(name, **fields)`.

Importing this package registers every model: convnets (simple_cnn, vgg, resnet20,
resnet18, fast_cnn, conv1d, text_cnn), recurrent classifiers (rnn), the CRNN hybrid
(crnn) and the character language model (char_lm).
"""
from flaxnets.models import classifiers, convnets, recurrent  # noqa: F401  (registration)
from flaxnets.models.registry import MODELS, build_model, register  # noqa: F401
