"""The environment imports what the torch -> ONNX -> onnx2torch path needs, with a real
torchvision built for this torch."""
import onnx2torch  # noqa: F401
import torch
import torchvision

import bnspec.adapters  # noqa: F401

assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
assert torchvision.__version__.split("+")[0] == "0.29.1", torchvision.__version__
torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)  # the compiled ops load
print("torchvision env ok:", torch.__version__, torchvision.__version__)
