"""The environment imports what the torch -> nobuco -> Keras path needs, with a real torchvision
built for this torch, and the Keras 2 layout nobuco 0.17.0 imports."""
import keras
import nobuco  # noqa: F401
import torch
import torchvision

import bnspec.adapters.converters.nobuco  # noqa: F401

assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
assert torchvision.__version__.split("+")[0] == "0.29.1", torchvision.__version__
assert keras.__version__ == "2.15.0", keras.__version__
print("nobuco env ok:", torch.__version__, torchvision.__version__, keras.__version__)
