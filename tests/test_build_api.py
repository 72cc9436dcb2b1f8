"""API edges: from_onnx options are keyword-only; build's params are flat (each model takes its
names) or per model (model_params); a param name no model has is an error naming it."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.ir import Module, TensorType
from kiln.ops import GraphBuilder
from tests.e2e.models import mlp


def _add_w(name: str = "w", size: int = 4) -> tuple[Module, dict[str, np.ndarray]]:
    """y = x + w, w a param of that name."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType((size,), "float32"))
    w = b.add_constant(name, np.zeros(size, np.float32))
    (y,) = b.emit("add", [x, w])
    return b.finish([y]), dict(b.constants)


def _run(factory, model: str, x: np.ndarray) -> np.ndarray:
    gmod = kiln.GraphModule(factory[model](kiln.cpu(0)))
    gmod.run(x=x)
    return gmod.get_output(0)


def test_from_onnx_options_are_keyword_only():
    model, inputs = mlp()
    with pytest.raises(TypeError, match="positional"):
        kiln.from_onnx(model, {k: v.shape for k, v in inputs.items()})


def test_bind_refuses_unknown_names_naming_them_and_the_params():
    mod, params = _add_w()
    with pytest.raises(kiln.InputError, match=r"no params \['w2'\]; its params are \['w'\]"):
        mod.bind({**params, "w2": np.ones(4, np.float32)})


def test_flat_params_go_to_the_models_that_have_them():
    (a, _), (b, _) = _add_w("w"), _add_w("v", 2)
    factory = kiln.build({"a": a, "b": b}, progress=False,
                         params={"w": np.full(4, 1, np.float32), "v": np.full(2, 2, np.float32)})
    assert _run(factory, "a", np.zeros(4, np.float32)).tolist() == [1] * 4
    assert _run(factory, "b", np.zeros(2, np.float32)).tolist() == [2] * 2


def test_a_param_of_no_model_is_an_error_before_compiling():
    a, params = _add_w()
    with pytest.raises(kiln.InputError, match=r"no model has params \['typo'\].*'a': \['w'\]"):
        kiln.build({"a": a}, params={**params, "typo": np.ones(1)}, progress=False)
    with pytest.raises(kiln.InputError, match=r"no model has params \['typo'\]"):
        kiln.build(a, params={**params, "typo": np.ones(1)}, progress=False)


def test_model_params_bind_same_names_to_different_values():
    (a, _), (b, _) = _add_w(), _add_w()
    factory = kiln.build({"a": a, "b": b}, progress=False,
                         model_params={"a": {"w": np.full(4, 1, np.float32)},
                                       "b": {"w": np.full(4, 5, np.float32)}})
    x = np.arange(4, dtype=np.float32)
    assert _run(factory, "a", x).tolist() == (x + 1).tolist()
    assert _run(factory, "b", x).tolist() == (x + 5).tolist()


def test_model_params_are_checked():
    a, params = _add_w()
    with pytest.raises(kiln.InputError, match=r"names models \['c'\].*the models are \['a'\]"):
        kiln.build({"a": a}, model_params={"c": params}, progress=False)
    with pytest.raises(kiln.InputError, match=r"model 'a': params \['w'\] are given both"):
        kiln.build({"a": a}, params=params, model_params={"a": params}, progress=False)
    with pytest.raises(kiln.InputError, match=r"module 'a' has no params \['u'\]"):
        kiln.build({"a": a}, model_params={"a": {**params, "u": np.ones(1)}}, progress=False)
