"""The OpenVINO backend: a kiln-external graph compiled by OpenVINO's CPU plugin.

The graph becomes the same ONNX model as for onnxruntime (onnx_graph.py), which OpenVINO
reads from memory and compiles once at load. A compiled model runs through infer requests,
each usable by one thread at a time, so concurrent `run` calls take one from a pool (made
on demand, kept for reuse). openvino and onnx are imported only when needed.
"""

from __future__ import annotations

import io
import queue
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BackendError
from . import onnx_graph
from .base import engine_module

if TYPE_CHECKING:  # for the annotations only
    import openvino

DEVICE = "CPU"
# Compile options that shape the engine (and so belong in the engine key): lowest latency
# for one request at a time, and float32 arithmetic even on CPUs with bf16/f16 units, so
# results match kiln's own kernels and the other backends.
COMPILE_OPTIONS = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def _ov() -> ModuleType:
    return engine_module("openvino", OpenVinoBackend)


class OpenVinoBackend(onnx_graph.OnnxBackend):
    """Runs kiln-external graphs with OpenVINO on the CPU."""

    name = "openvino"
    package = "openvino onnx"  # onnx builds the model OpenVINO reads

    def __init__(self, *, num_threads: int = 1) -> None:
        """num_threads: OpenVINO's inference threads. One by default, for the reason given
        for onnxruntime (kiln/runtime/external/onnxruntime.py): kiln's kernels already use
        the cores, and executors may run concurrently. Threads are not pinned to cores, so
        the engine never fights kiln's pool threads for a pinned core."""
        self.num_threads = num_threads
        self._compiled: openvino.CompiledModel | None = None
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    @classmethod
    def engine_key(cls) -> str:
        """OpenVINO's version, the device and the compile options."""
        options = " ".join(f"{k}={v}" for k, v in sorted(COMPILE_OPTIONS.items()))
        return f"openvino {_ov().get_version()} {DEVICE} {options} opset {onnx_graph.OPSET}"

    def _config(self) -> dict[str, object]:
        """The compile options, and the run-time ones: thread count, no pinning."""
        return {**COMPILE_OPTIONS, "INFERENCE_NUM_THREADS": self.num_threads,
                "ENABLE_CPU_PINNING": False}

    def _take(self, compiled: openvino.CompiledModel) -> None:
        """Use compiled from now on (with a new pool of requests)."""
        self._compiled = compiled
        self._requests = queue.SimpleQueue()

    def init(self, graph: dict, constants: dict[str, np.ndarray]) -> None:
        """Build the ONNX model of graph, read it into OpenVINO and compile it."""
        function = graph["function"]
        data = onnx_graph.serialize(onnx_graph.build_model(graph, constants,
                                                           checker=type(self)), function)
        ov = _ov()
        try:
            core = ov.Core()
            model = core.read_model(model=data, weights=b"")
            self._take(core.compile_model(model, DEVICE, self._config()))
        except Exception as e:  # OpenVINO raises RuntimeError and its own types
            raise BackendError(f"OpenVINO could not build external function {function!r}: "
                               f"{e}") from e

    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        """One inference on a request of the pool; its results are copied into outputs."""
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            request.infer(list(inputs))
            for k, out in enumerate(outputs):
                np.copyto(out, request.get_output_tensor(k).data)
        finally:
            self._requests.put(request)

    def export_engine(self) -> bytes | None:
        """The compiled model (CompiledModel.export_model); None before init."""
        if self._compiled is None:
            return None
        stream = io.BytesIO()  # the stream form: what the plain form returns varies by release
        self._compiled.export_model(stream)
        return stream.getvalue()

    def import_engine(self, data: bytes) -> bool:
        """Take a compiled model exported under the same engine_key instead of calling init;
        False when this OpenVINO cannot import it (kiln then builds the engine again)."""
        try:
            self._take(_ov().Core().import_model(data, DEVICE, self._config()))
        except RuntimeError:
            return False
        return True
