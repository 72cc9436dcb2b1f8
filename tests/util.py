"""Test helpers: compile ONNX models with kiln and compare with onnxruntime."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

import kiln


def ort_run(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run model with onnxruntime on the CPU (graph optimizations off: the plain reference)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, dict(inputs))


def kiln_run(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Import, compile and run model with kiln in this process."""
    shapes = {k: np.asarray(v).shape for k, v in inputs.items()}
    mod, params = kiln.from_onnx(model, shapes=shapes)
    lib = kiln.build(mod, params=params, progress=False)
    gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
    gmod.set_input(**inputs)
    gmod.run()
    return [gmod.get_output(i) for i in range(gmod.get_num_outputs())]


def check_against_ort(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], *,
                      rtol: float = 1e-5, atol: float = 1e-5) -> list[np.ndarray]:
    """Assert kiln's outputs equal onnxruntime's (shape, dtype and values within tolerance)."""
    expected = ort_run(model, inputs)
    got = kiln_run(model, inputs)
    assert len(got) == len(expected), f"{len(got)} outputs, onnxruntime gives {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        e = np.asarray(e)
        assert g.shape == e.shape, f"output {k}: shape {g.shape}, onnxruntime {e.shape}"
        assert g.dtype == e.dtype, f"output {k}: dtype {g.dtype}, onnxruntime {e.dtype}"
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"output {k}")
    return got
