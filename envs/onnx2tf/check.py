"""The environment imports onnx2tf (Python >= 3.12) with the CPU TensorFlow and tf-keras.
No adapter uses it yet (see the converters report)."""
import onnx2tf  # noqa: F401
import tensorflow as tf
import tf_keras  # noqa: F401

import bnspec.adapters  # noqa: F401

assert tf.__version__ == "2.21.0", tf.__version__
print("onnx2tf env ok:", tf.__version__)
