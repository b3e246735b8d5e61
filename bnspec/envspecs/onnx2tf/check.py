"""The environment imports onnx2tf (Python >= 3.12) with the CPU TensorFlow and tf-keras, and the
adapter that runs in it (bnspec.adapters.converters.onnx2tf:TORCH_ONNX_ONNX2TF; its torch source
is exported by the main environment's interpreter, so there is no torch here)."""
import importlib.util

import onnx2tf  # noqa: F401
import tensorflow as tf
import tf_keras  # noqa: F401

import bnspec.adapters  # noqa: F401
from bnspec.adapters.converters.onnx2tf import TORCH_ONNX_ONNX2TF

assert tf.__version__ == "2.21.0", tf.__version__
assert importlib.util.find_spec("torch") is None, "torch belongs to the main environment"
TORCH_ONNX_ONNX2TF.setup()
print("onnx2tf env ok:", tf.__version__, TORCH_ONNX_ONNX2TF.name)
