"""Write examples/example_cnn.onnx: a small image classifier for the quick start.

Three conv + batch-norm + relu layers (two followed by max-pooling), global average
pooling and a linear classifier; input "image" 1x3x32x32, output "scores" 1x10. The weights
are random (fixed seed): the model is for trying kiln, not for classifying pictures.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
nodes, weights = [], []


def weight(name: str, array: np.ndarray) -> str:
    weights.append(numpy_helper.from_array(array.astype(np.float32), name))
    return name


def conv_bn_relu(x: str, name: str, cin: int, cout: int) -> str:
    """3x3 convolution (He-initialized), batch norm, relu."""
    w = weight(f"{name}.weight", rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin)))
    bn = [weight(f"{name}.bn.{p}", v) for p, v in [
        ("scale", 1 + 0.1 * rng.standard_normal(cout)), ("bias", 0.1 * rng.standard_normal(cout)),
        ("mean", 0.1 * rng.standard_normal(cout)), ("var", rng.uniform(0.5, 1.5, cout))]]
    nodes.append(helper.make_node("Conv", [x, w], [f"{name}.conv"], name=f"{name}/Conv",
                                  kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("BatchNormalization", [f"{name}.conv", *bn], [f"{name}.bn"],
                                  name=f"{name}/BatchNormalization"))
    nodes.append(helper.make_node("Relu", [f"{name}.bn"], [name], name=f"{name}/Relu"))
    return name


def max_pool(x: str, name: str) -> str:
    nodes.append(helper.make_node("MaxPool", [x], [name], name=f"{name}/MaxPool",
                                  kernel_shape=[2, 2], strides=[2, 2]))
    return name


x = max_pool(conv_bn_relu("image", "layer1", 3, 16), "pool1")  # 16 x 16 x 16
x = max_pool(conv_bn_relu(x, "layer2", 16, 32), "pool2")  # 32 x 8 x 8
x = conv_bn_relu(x, "layer3", 32, 64)  # 64 x 8 x 8
fc_w = weight("fc.weight", rng.standard_normal((10, 64)) / 8)
fc_b = weight("fc.bias", 0.1 * rng.standard_normal(10))
nodes += [
    helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap/GlobalAveragePool"),
    helper.make_node("Flatten", ["gap"], ["features"], name="flatten/Flatten"),
    helper.make_node("Gemm", ["features", fc_w, fc_b], ["scores"], name="fc/Gemm", transB=1),
]
graph = helper.make_graph(
    nodes, "example_cnn",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
    [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10])],
    weights,
)
model = helper.make_model(graph, producer_name="kiln-examples",
                          opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8  # readable by onnxruntime releases of the last years
onnx.checker.check_model(model, full_check=True)
out = Path(__file__).with_name("example_cnn.onnx")
onnx.save(model, out)
print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
