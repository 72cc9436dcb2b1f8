"""The benchmark's models: PyTorch definitions at real sizes exported to ONNX (cached), and
kiln's end-to-end test models. Each becomes an ONNX file plus an .npz of seeded inputs."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.runtime.files import atomic_path

from . import convnets, dense, transformers

OPSET = 17
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TorchSpec:
    """A module class and its inputs: name -> (shape, dtype, high) with high the exclusive
    bound of an integer input (0 for a float input drawn from a normal distribution)."""

    build: Callable
    inputs: dict[str, tuple[tuple[int, ...], str, int]]


def _image(size: int) -> dict[str, tuple[tuple[int, ...], str, int]]:
    return {"image": ((1, 3, size, size), "float32", 0)}


TORCH_MODELS: dict[str, TorchSpec] = {
    "resnet50": TorchSpec(convnets.ResNet50, _image(224)),
    "mobilenet_v2": TorchSpec(convnets.MobileNetV2, _image(224)),
    "mobilenet_v3": TorchSpec(convnets.MobileNetV3, _image(224)),
    "efficientnet_b0": TorchSpec(convnets.EfficientNetB0, _image(224)),
    "shufflenet_v1": TorchSpec(convnets.ShuffleNetV1, _image(224)),
    "vit_s16": TorchSpec(transformers.ViTSmall16, _image(224)),
    "bert_base": TorchSpec(transformers.BertBase,
                           {"input_ids": ((1, 128), "int64", 30522),
                            "attention_mask": ((1, 128), "int64", 1)}),  # all ones
    "yolov8n": TorchSpec(dense.YoloV8n, _image(640)),
    "unet": TorchSpec(dense.UNet, _image(256)),
    "audio_conv1d": TorchSpec(dense.AudioConv1d, {"audio": ((1, 1, 16000), "float32", 0)}),
}


@dataclass(frozen=True)
class BenchModel:
    """A model ready to benchmark: its ONNX file and an .npz of its inputs."""

    name: str
    onnx_path: Path
    inputs_path: Path
    source: str  # "torch" (exported here) or "e2e" (tests/e2e/models.py)


def cache_dir() -> Path:
    """Where exported models are kept: $KILN_BENCH_CACHE, else ~/.cache/kiln-bench."""
    default = Path.home() / ".cache" / "kiln-bench"
    path = Path(os.environ.get("KILN_BENCH_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _definition_digest() -> str:
    """A hash of every zoo source file and the torch version: a change re-exports."""
    import torch

    h = hashlib.sha256(torch.__version__.encode())
    for source in sorted(HERE.glob("*.py")):
        h.update(source.read_bytes())
    return h.hexdigest()[:16]


def _inputs(spec: TorchSpec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype, high) in spec.inputs.items():
        if dtype == "float32":
            out[name] = rng.standard_normal(shape, dtype=np.float32)
        else:
            out[name] = (rng.integers(0, high, shape) if high > 1
                         else np.ones(shape)).astype(dtype)
    return out


def _export_torch(name: str, onnx_path: Path, inputs: dict[str, np.ndarray]) -> None:
    import torch  # torch (and the test models' helpers that import it) only to export

    from tests.e2e.torch_models import randomize_norms

    torch.manual_seed(0)
    module = TORCH_MODELS[name].build()
    randomize_norms(module)
    module.eval()
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    with atomic_path(onnx_path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=list(inputs))


def _save_inputs(path: Path, inputs: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **inputs)


def prepare(name: str) -> BenchModel:
    """The ONNX file and inputs of model `name`, exported now unless cached."""
    root = cache_dir()
    if name in TORCH_MODELS:
        stem = root / f"{name}-{_definition_digest()}"
        onnx_path, inputs_path = stem.with_suffix(".onnx"), stem.with_suffix(".npz")
        if not onnx_path.exists() or not inputs_path.exists():
            inputs = _inputs(TORCH_MODELS[name], seed=0)
            _export_torch(name, onnx_path, inputs)
            _save_inputs(inputs_path, inputs)
        return BenchModel(name, onnx_path, inputs_path, "torch")
    from tests.e2e import models as e2e

    if name not in e2e.MODELS:
        raise KeyError(f"unknown model '{name}'; known: {all_models()}")
    model, inputs = e2e.MODELS[name]()
    stem = root / f"e2e-{name}"
    onnx_path, inputs_path = stem.with_suffix(".onnx"), stem.with_suffix(".npz")
    onnx_path.write_bytes(model.SerializeToString())
    _save_inputs(inputs_path, inputs)
    return BenchModel(name, onnx_path, inputs_path, "e2e")


def e2e_models() -> list[str]:
    from tests.e2e import models as e2e

    return list(e2e.MODELS)


def all_models() -> list[str]:
    return [*TORCH_MODELS, *e2e_models()]
