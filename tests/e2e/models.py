"""Small, realistic ONNX models for the end-to-end tests, in the op forms exporters emit.

Each builder returns (model, inputs): a model that passes onnx.checker (full check) and a
dict of fixed-seed input arrays. Weights are fixed-seed and He-scaled so activations stay O(1).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
# The IR version exporters wrote with each opset (onnxruntime reads all of them).
IR_VERSION = {9: 4, 17: 8, 20: 9}


class ModelBuilder:
    """Collects nodes and fixed-seed weights; names nodes by scope as torch.onnx does."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.scope = ""
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.scope}/{hint}_{self._count}"

    def const(self, value, hint: str = "Constant", dtype=np.float32) -> str:
        """An initializer holding value (cast to dtype); returns its name."""
        name = f"{self.scope}.{hint}_{self._count}".lstrip(".")
        self._count += 1
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values, hint: str = "shape") -> str:
        return self.const(values, hint, np.int64)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, out: str | None = None,
           **attrs) -> str | list[str]:
        """Add a node; returns its output name (or names when outputs > 1)."""
        name = self._name(op_type)
        outs = [out] if out else [f"{name}_output_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def normal(self, shape, std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def conv(self, x: str, cin: int, cout: int, k: int, *, stride: int = 1, group: int = 1,
             bias: bool = False) -> str:
        """A k x k Conv with "same" padding (pads = k // 2) and He-scaled weights."""
        fan_in = cin // group * k * k
        w = self.const(self.normal((cout, cin // group, k, k), np.sqrt(2.0 / fan_in)), "weight")
        args = [x, w] + ([self.const(self.normal(cout, 0.1), "bias")] if bias else [])
        p = k // 2
        return self.op("Conv", *args, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[p, p, p, p], group=group, dilations=[1, 1])

    def batch_norm(self, x: str, c: int, *, gain: float = 1.0) -> str:
        """BatchNormalization with plausible running statistics (scale about gain)."""
        gamma = self.const(gain * (1.0 + self.normal(c, 0.1)), "bn.weight")
        beta = self.const(self.normal(c, 0.1), "bn.bias")
        mean = self.const(self.normal(c, 0.1), "bn.running_mean")
        var = self.const(self.rng.uniform(0.5, 1.5, c), "bn.running_var")
        return self.op("BatchNormalization", x, gamma, beta, mean, var, epsilon=1e-5,
                       momentum=0.9)

    def gemm(self, x: str, cin: int, cout: int, *, out: str | None = None) -> str:
        """A linear layer as torch exports it: Gemm(transB=1) with a [cout, cin] weight."""
        w = self.const(self.normal((cout, cin), np.sqrt(1.0 / cin)), "weight")
        b = self.const(self.normal(cout, 0.1), "bias")
        return self.op("Gemm", x, w, b, alpha=1.0, beta=1.0, transB=1, out=out)

    def model(self, name: str, inputs: list, outputs: list, *, opset: int) -> onnx.ModelProto:
        """The finished, checked model; inputs/outputs are (name, elem_type, shape) triples."""
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(*i) for i in inputs],
            [helper.make_tensor_value_info(*o) for o in outputs],
            self.initializers,
        )
        model = helper.make_model(graph, producer_name="kiln-tests",
                                  opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = IR_VERSION[opset]
        onnx.checker.check_model(model, full_check=True)
        return model


def _image(seed: int, shape=(1, 3, 64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _basic_block(g: ModelBuilder, x: str, cin: int, cout: int, stride: int) -> str:
    """ResNet BasicBlock: conv-bn-relu, conv-bn, shortcut (1x1 conv + bn when downsampling)."""
    y = g.op("Relu", g.batch_norm(g.conv(x, cin, cout, 3, stride=stride), cout))
    # Trained residual branches end in small BN scales; this keeps the sum O(1).
    y = g.batch_norm(g.conv(y, cout, cout, 3), cout, gain=0.5)
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = g.batch_norm(g.conv(x, cin, cout, 1, stride=stride), cout, gain=0.5)
    return g.op("Relu", g.op("Add", y, shortcut))


def resnet18_like() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """ResNet-18 layout (widths 16/32/64/128) on a 1x3x64x64 image, 100 classes."""
    g = ModelBuilder(seed=18)
    g.scope = "/conv1"
    y = g.op("Relu", g.batch_norm(g.conv("input", 3, 16, 7, stride=2), 16))
    y = g.op("MaxPool", y, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 16
    for stage, cout in enumerate((16, 32, 64, 128), start=1):
        for block in range(2):
            g.scope = f"/layer{stage}/layer{stage}.{block}"
            y = _basic_block(g, y, cin, cout, stride=2 if stage > 1 and block == 0 else 1)
            cin = cout
    g.scope = "/fc"
    y = g.op("Flatten", g.op("GlobalAveragePool", y), axis=1)
    g.gemm(y, 128, 100, out="logits")
    model = g.model("resnet18_like", [("input", FLOAT, [1, 3, 64, 64])],
                    [("logits", FLOAT, [1, 100])], opset=17)
    return model, {"input": _image(180)}


def _clip6(g: ModelBuilder, x: str) -> str:
    """ReLU6 as opset-11+ exporters write it: Clip with min/max inputs."""
    return g.op("Clip", x, g.const(0.0, "min"), g.const(6.0, "max"))


def _inverted_residual(g: ModelBuilder, x: str, cin: int, cout: int, expand: int,
                       stride: int) -> str:
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, 1x1 linear projection, maybe residual."""
    hidden = cin * expand
    y = x
    if expand != 1:
        y = _clip6(g, g.batch_norm(g.conv(y, cin, hidden, 1), hidden))
    y = _clip6(g, g.batch_norm(g.conv(y, hidden, hidden, 3, stride=stride, group=hidden), hidden))
    y = g.batch_norm(g.conv(y, hidden, cout, 1), cout)
    return g.op("Add", x, y) if stride == 1 and cin == cout else y


def mobilenetv2_like() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """MobileNetV2 layout (5 inverted residual blocks) on a 1x3x64x64 image, 10 classes."""
    g = ModelBuilder(seed=2)
    g.scope = "/features.0"
    y = _clip6(g, g.batch_norm(g.conv("input", 3, 16, 3, stride=2), 16))
    cin = 16
    blocks = [(1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2), (4, 32, 1)]
    for k, (expand, cout, stride) in enumerate(blocks, start=1):
        g.scope = f"/features.{k}"
        y = _inverted_residual(g, y, cin, cout, expand, stride)
        cin = cout
    g.scope = "/features.6"
    y = g.op("HardSwish", g.batch_norm(g.conv(y, cin, 128, 1), 128))
    g.scope = "/classifier"
    shape = g.op("Constant", value=numpy_helper.from_array(np.array([1, -1], np.int64)))
    y = g.op("Reshape", g.op("GlobalAveragePool", y), shape)
    g.gemm(y, 128, 10, out="logits")
    model = g.model("mobilenetv2_like", [("input", FLOAT, [1, 3, 64, 64])],
                    [("logits", FLOAT, [1, 10])], opset=17)
    return model, {"input": _image(20)}


def _dims(g: ModelBuilder, x: str, axes: list[int]) -> list[str]:
    """1-D int64 tensors holding x's dims at axes: Shape -> Gather -> Unsqueeze."""
    shape = g.op("Shape", x)
    return [g.op("Unsqueeze", g.op("Gather", shape, g.ints(a, "axis"), axis=0), g.ints([0], "axes"))
            for a in axes]


def _dense(g: ModelBuilder, x: str, cin: int, cout: int) -> str:
    """A linear layer on a [batch, seq, cin] tensor: MatMul + Add, as torch exports it."""
    w = g.const(g.normal((cin, cout), np.sqrt(1.0 / cin)), "weight")
    return g.op("Add", g.op("MatMul", x, w), g.const(g.normal(cout, 0.1), "bias"))


def _layer_norm(g: ModelBuilder, x: str, c: int) -> str:
    gamma = g.const(1.0 + g.normal(c, 0.1), "LayerNorm.weight")
    beta = g.const(g.normal(c, 0.1), "LayerNorm.bias")
    return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=1e-12)


def _gelu_erf(g: ModelBuilder, x: str) -> str:
    """GELU as torch exported it before opset 20: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    e = g.op("Erf", g.op("Div", x, g.const(np.sqrt(2.0), "sqrt2")))
    return g.op("Mul", g.op("Mul", x, g.op("Add", e, g.const(1.0, "one"))), g.const(0.5, "half"))


def _attention(g: ModelBuilder, x: str, mask_bias: str, hidden: int, heads: int) -> str:
    """Multi-head self-attention with head shapes computed from Shape at run time."""
    d = hidden // heads
    batch, seq = _dims(g, x, [0, 1])
    head_shape = g.op("Concat", batch, seq, g.ints([heads], "heads"), g.ints([d], "head_dim"),
                      axis=0)

    def split_heads(t: str, perm: list[int]) -> str:
        return g.op("Transpose", g.op("Reshape", t, head_shape), perm=perm)

    q = split_heads(_dense(g, x, hidden, hidden), [0, 2, 1, 3])
    k = split_heads(_dense(g, x, hidden, hidden), [0, 2, 3, 1])
    v = split_heads(_dense(g, x, hidden, hidden), [0, 2, 1, 3])
    scores = g.op("Div", g.op("MatMul", q, k), g.const(np.sqrt(d), "sqrt_d"))
    probs = g.op("Softmax", g.op("Add", scores, mask_bias), axis=-1)
    ctx = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    out_shape = g.op("Concat", batch, seq, g.ints([hidden], "hidden"), axis=0)
    return _dense(g, g.op("Reshape", ctx, out_shape), hidden, hidden)


def _encoder_layer(g: ModelBuilder, x: str, mask_bias: str, hidden: int, heads: int,
                   ffn: int, erf_gelu: bool) -> str:
    x = _layer_norm(g, g.op("Add", _attention(g, x, mask_bias, hidden, heads), x), hidden)
    h = _dense(g, x, hidden, ffn)
    h = _gelu_erf(g, h) if erf_gelu else g.op("Gelu", h, approximate="none")
    return _layer_norm(g, g.op("Add", _dense(g, h, ffn, hidden), x), hidden)


def bert_like() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A 2-layer BERT encoder (hidden 32, 4 heads, FFN 64) with pooler; opset 20."""
    vocab, seq, hidden, heads, ffn = 100, 16, 32, 4, 64
    g = ModelBuilder(seed=7)
    g.scope = "/embeddings"
    words = g.op("Gather", g.const(g.normal((vocab, hidden), 1.0), "word_embeddings"),
                 "input_ids", axis=0)
    length = g.op("Gather", g.op("Shape", "input_ids"), g.ints(1, "axis"), axis=0)
    positions = g.op("Unsqueeze", g.op("Range", g.ints(0, "start"), length, g.ints(1, "delta")),
                     g.ints([0], "axes"))
    pos = g.op("Gather", g.const(g.normal((64, hidden), 1.0), "position_embeddings"),
               positions, axis=0)
    types = g.op("Gather", g.const(g.normal((2, hidden), 1.0), "token_type_embeddings"),
                 g.ints(np.zeros((1, seq)), "token_type_ids"), axis=0)
    x = _layer_norm(g, g.op("Add", g.op("Add", words, pos), types), hidden)

    g.scope = "/mask"
    mask4 = g.op("Unsqueeze", "attention_mask", g.ints([1, 2], "axes"))
    # Two forms exporters emit: (1 - m) * -10000, and Where(m == 0, finfo.min, 0).
    inverted = g.op("Sub", g.const(1.0, "one"), g.op("Cast", mask4, to=FLOAT))
    bias_mul = g.op("Mul", inverted, g.const(-10000.0, "neg"))
    is_pad = g.op("Equal", mask4, g.ints(0, "zero"))
    bias_where = g.op("Where", is_pad, g.const(np.finfo(np.float32).min, "min"),
                      g.const(0.0, "zero"))

    for layer, (bias, erf) in enumerate([(bias_mul, False), (bias_where, True)]):
        g.scope = f"/encoder/layer.{layer}"
        x = _encoder_layer(g, x, bias, hidden, heads, ffn, erf_gelu=erf)
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/Identity"))

    g.scope = "/pooler"
    first = g.op("Gather", x, g.ints(0, "index"), axis=1)
    w = g.const(g.normal((hidden, hidden), np.sqrt(1.0 / hidden)), "dense.weight")
    dense = g.op("Gemm", first, w, g.const(g.normal(hidden, 0.1), "dense.bias"), transB=1)
    g.op("Tanh", dense, out="pooler_output")

    model = g.model("bert_like",
                    [("input_ids", INT64, [1, seq]), ("attention_mask", INT64, [1, seq])],
                    [("last_hidden_state", FLOAT, [1, seq, hidden]),
                     ("pooler_output", FLOAT, [1, hidden])], opset=20)
    rng = np.random.default_rng(70)
    mask = np.ones((1, seq), np.int64)
    mask[:, -4:] = 0  # padding at the end
    return model, {"input_ids": rng.integers(0, vocab, (1, seq), dtype=np.int64),
                   "attention_mask": mask}


def _conv_silu(g: ModelBuilder, x: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
    """YOLOv5's Conv block after BN folding: Conv(bias) -> x * Sigmoid(x)."""
    y = g.conv(x, cin, cout, k, stride=stride, bias=True)
    return g.op("Mul", y, g.op("Sigmoid", y))


def _upsample_linear_x2(g: ModelBuilder, x: str) -> str:
    """Bilinear x2 with sizes computed at run time: Shape -> Slice -> Mul -> Concat."""
    shape = g.op("Shape", x)
    nc = g.op("Slice", shape, g.ints([0], "starts"), g.ints([2], "ends"))
    hw = g.op("Slice", shape, g.ints([2], "starts"), g.ints([4], "ends"))
    sizes = g.op("Concat", nc, g.op("Mul", hw, g.ints([2], "scale")), axis=0)
    return g.op("Resize", x, "", "", sizes, mode="linear",
                coordinate_transformation_mode="pytorch_half_pixel")


def _yolo_head(g: ModelBuilder, x: str, cin: int, anchors: int, classes: int) -> tuple[str, str]:
    """Detect layer: 1x1 conv, reshape to (b, a, 5+c, h, w) via Shape/Gather, decode."""
    per = 5 + classes
    y = g.conv(x, cin, anchors * per, 1, bias=True)
    batch, h, w = _dims(g, y, [0, 2, 3])
    shape5 = g.op("Concat", batch, g.ints([anchors], "anchors"), g.ints([per], "per_anchor"),
                  h, w, axis=0)
    raw = g.op("Transpose", g.op("Reshape", y, shape5), perm=[0, 1, 3, 4, 2])
    flat = g.op("Reshape", raw, g.ints([1, -1, per], "shape"))
    xy, wh, obj, cls = g.op("Split", flat, g.ints([2, 2, 1, classes], "split"), axis=-1,
                            outputs=4)
    xy = g.op("Sub", g.op("Mul", g.op("Sigmoid", xy), g.const(2.0, "two")), g.const(0.5, "half"))
    wh2 = g.op("Mul", g.op("Sigmoid", wh), g.const(2.0, "two"))
    wh = g.op("Mul", wh2, wh2)
    decoded = g.op("Concat", xy, wh, g.op("Sigmoid", obj), g.op("Sigmoid", cls), axis=-1)
    return decoded, raw


def detector_head() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """YOLO-style detector: conv backbone, FPN with two Resizes, two-scale decode head."""
    g = ModelBuilder(seed=5)
    g.scope = "/backbone"
    c1 = _conv_silu(g, "images", 3, 16, 3, stride=2)  # 32x32
    p3 = _conv_silu(g, c1, 16, 32, 3, stride=2)  # 16x16
    p4 = _conv_silu(g, p3, 32, 64, 3, stride=2)  # 8x8
    p5 = _conv_silu(g, p4, 64, 64, 3, stride=2)  # 4x4
    g.scope = "/neck"
    up = g.op("Resize", p5, "", g.const([1.0, 1.0, 2.0, 2.0], "scales"), mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    f4 = _conv_silu(g, g.op("Concat", up, p4, axis=1), 128, 32, 1)  # 8x8
    f3 = _conv_silu(g, g.op("Concat", _upsample_linear_x2(g, f4), p3, axis=1), 64, 32, 1)
    g.scope = "/head"
    d3, _ = _yolo_head(g, f3, 32, anchors=3, classes=4)
    d4, raw4 = _yolo_head(g, f4, 32, anchors=3, classes=4)
    g.op("Concat", d3, d4, axis=1, out="detections")
    g.nodes.append(helper.make_node("Identity", [raw4], ["raw_p4"], name="/head/Identity"))
    model = g.model("detector_head", [("images", FLOAT, [1, 3, 64, 64])],
                    [("detections", FLOAT, [1, 3 * (16 * 16 + 8 * 8), 9]),
                     ("raw_p4", FLOAT, [1, 3, 8, 8, 9])], opset=17)
    return model, {"images": _image(50)}


def mlp() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """An MNIST-style MLP (batch 2): Flatten, 3 x (Gemm + Relu), classifier Gemm, Softmax."""
    g = ModelBuilder(seed=1)
    y = g.op("Flatten", "input", axis=1)
    for cin, cout in [(784, 128), (128, 64), (64, 32)]:
        y = g.op("Relu", g.gemm(y, cin, cout))
    g.op("Softmax", g.gemm(y, 32, 10), axis=-1, out="probs")
    model = g.model("mlp", [("input", FLOAT, [2, 1, 28, 28])], [("probs", FLOAT, [2, 10])],
                    opset=17)
    return model, {"input": _image(10, (2, 1, 28, 28))}


def mlp_opset9() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The MLP as old exporters wrote it (opset 9): MatMul + Add, Dropout, 2-D Softmax."""
    g = ModelBuilder(seed=1)
    y = g.op("Flatten", "input", axis=1)
    for cin, cout in [(784, 128), (128, 64), (64, 32)]:
        w = g.const(g.normal((cin, cout), np.sqrt(2.0 / cin)), "weight")
        y = g.op("Relu", g.op("Add", g.op("MatMul", y, w), g.const(g.normal(cout, 0.1), "bias")))
        y = g.op("Dropout", y, ratio=0.5)
    w = g.const(g.normal((32, 10), np.sqrt(1.0 / 32)), "weight")
    logits = g.op("Add", g.op("MatMul", y, w), g.const(g.normal(10, 0.1), "bias"))
    g.op("Softmax", logits, axis=1, out="probs")
    model = g.model("mlp_opset9", [("input", FLOAT, [2, 1, 28, 28])], [("probs", FLOAT, [2, 10])],
                    opset=9)
    return model, {"input": _image(10, (2, 1, 28, 28))}


MODELS = {f.__name__: f for f in
          (resnet18_like, mobilenetv2_like, bert_like, detector_head, mlp, mlp_opset9)}
