"""The environment imports what the Flax -> jax2onnx -> ONNX Runtime path needs."""
import flax
import jax
import jax2onnx  # noqa: F401
import onnxruntime  # noqa: F401

import bnspec.adapters  # noqa: F401

assert jax.__version__ == "0.10.2" and flax.__version__ == "0.12.8", (jax.__version__, flax.__version__)
print("jax2onnx env ok:", jax.__version__, flax.__version__)
