"""The environment imports what the Keras / tf.keras -> tf2onnx -> ONNX Runtime paths need."""
import keras
import onnxruntime  # noqa: F401
import tensorflow as tf
import tf2onnx
import tf_keras  # noqa: F401

import bnspec.adapters  # noqa: F401

assert tf.__version__ == "2.21.0" and keras.__version__ == "3.15.1", (tf.__version__, keras.__version__)
assert tf2onnx.__version__.startswith("1.17.0"), tf2onnx.__version__
print("tf2onnx env ok:", tf.__version__, keras.__version__, tf2onnx.__version__)
