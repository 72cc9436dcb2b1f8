"""Export PyTorch modules with torch.onnx, compile them with kiln, compare with ORT and PyTorch.

Every module is exported by the TorchScript exporter (opsets 11, 13, 17) and by the dynamo
exporter (its default opset: 20 in torch 2.13), with a dynamic batch axis (and sequence axis):
kiln fixes the shapes from `shapes=` at sizes other than the traced ones. The dynamo export of
each model is compiled into a library and run in a fresh process; the other exports run in
this process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (CI installs torch==2.13.0)")

import kiln  # noqa: E402
from tests.e2e.torch_models import TORCH_MODELS, TorchCase  # noqa: E402
from tests.util import kiln_run, ort_run, run_in_fresh_process  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    # Said by torch itself on every export: the TorchScript exporter is deprecated, its tracer
    # warns inside nn.MultiheadAttention, and torch.export uses a deprecated pytree call.
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:# The axis name:UserWarning"),  # a Dim shared by inputs
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning"),
]

# rtol = atol: the largest absolute difference measured was 5e-7 (detector, crnn).
TOLERANCE = 1e-4
EXPORTERS = ("opset11", "opset13", "opset17", "dynamo")
FRESH_PROCESS = "dynamo"  # the exporter whose model is also exported and run in a new process

# torch 2.13's TorchScript exporter cannot export nn.MultiheadAttention below opset 14
# (aten::unflatten needs 13, aten::scaled_dot_product_attention 14); opset 14 stands in.
TOO_OLD = {("transformer", "opset11"), ("transformer", "opset13")}
EXTRA = [("transformer", "opset14")]


def _params():
    for name in sorted(TORCH_MODELS):
        for exporter in EXPORTERS:
            marks = ()
            if (name, exporter) in TOO_OLD:
                marks = pytest.mark.xfail(raises=torch.onnx.errors.UnsupportedOperatorError,
                                          strict=True, reason="torch cannot export this opset")
            yield pytest.param(name, exporter, id=f"{name}-{exporter}", marks=marks)
    for name, exporter in EXTRA:
        yield pytest.param(name, exporter, id=f"{name}-{exporter}")


def export(case: TorchCase, exporter: str, path: Path) -> onnx.ModelProto:
    """Export case.module with torch.onnx: "dynamo" or the TorchScript exporter at "opsetN"."""
    args, names = tuple(case.inputs.values()), list(case.inputs)
    if exporter == "dynamo":
        dims = {dim: torch.export.Dim(dim) for axes in case.dynamic_axes.values()
                for dim in axes.values()}
        shapes = tuple({axis: dims[dim] for axis, dim in case.dynamic_axes[k].items()}
                       for k in names)
        torch.onnx.export(case.module, args, path, dynamo=True, input_names=names,
                          dynamic_shapes=shapes, verbose=False)
    else:
        torch.onnx.export(case.module, args, path, dynamo=False, input_names=names,
                          opset_version=int(exporter.removeprefix("opset")),
                          dynamic_axes=case.dynamic_axes)
    return onnx.load(path)


def _check_dynamic(model: onnx.ModelProto, case: TorchCase) -> None:
    """The exported inputs keep the dynamic axes symbolic, so kiln must fix them."""
    inputs = {vi.name: vi.type.tensor_type.shape.dim for vi in model.graph.input}
    for name, axes in case.dynamic_axes.items():
        for axis in axes:
            dim = inputs[name][axis]
            assert dim.dim_param and not dim.HasField("dim_value"), (name, axis, dim)


def _compile_and_run_in_fresh_process(model: onnx.ModelProto, inputs: dict[str, np.ndarray],
                                      work: Path) -> list[np.ndarray]:
    mod, params = kiln.from_onnx(model, shapes={k: v.shape for k, v in inputs.items()})
    library = work / "model.so"
    kiln.build(mod, params=params, progress=False).export_library(library)
    got, report = run_in_fresh_process(library, inputs, work)
    assert report["outputs"] == [o.name for o in model.graph.output]
    return got


@pytest.mark.parametrize(("name", "exporter"), _params())
def test_export_matches_onnxruntime_and_torch(name: str, exporter: str, tmp_path: Path) -> None:
    case = TORCH_MODELS[name]()
    model = export(case, exporter, tmp_path / "model.onnx")
    _check_dynamic(model, case)
    legacy = exporter != "dynamo"
    run_inputs = case.legacy_run_inputs if legacy and case.legacy_run_inputs else case.run_inputs
    inputs = {k: v.numpy() for k, v in run_inputs.items()}
    with torch.no_grad():
        reference = case.module(*run_inputs.values())
    reference = reference if isinstance(reference, tuple) else (reference,)

    if exporter == FRESH_PROCESS:
        got = _compile_and_run_in_fresh_process(model, inputs, tmp_path)
    else:
        got = kiln_run(model, inputs)
    expected = ort_run(model, inputs)
    assert len(got) == len(expected) == len(reference)
    for k, (g, e, r) in enumerate(zip(got, expected, reference, strict=True)):
        assert (g.shape, g.dtype) == (e.shape, e.dtype), f"output {k}"
        np.testing.assert_allclose(g, e, rtol=TOLERANCE, atol=TOLERANCE,
                                   err_msg=f"output {k} vs onnxruntime")
        np.testing.assert_allclose(g, r.numpy(), rtol=TOLERANCE, atol=TOLERANCE,
                                   err_msg=f"output {k} vs torch")
