"""The onnxruntime backend: a kiln-external graph run as an onnxruntime CPU session.

The graph becomes an ONNX model (onnx_graph.py, shared with the OpenVINO backend), from
which one InferenceSession is built at load and shared by every executor of the library
(onnxruntime allows concurrent `run` calls on one session). onnxruntime and onnx are
optional: they are imported only when an engine is built, imported or keyed.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BackendError
from ..files import work_folder
from . import onnx_graph
from .base import engine_module

if TYPE_CHECKING:  # for the annotations only
    import onnxruntime

# Graph optimizations written into an exported engine: EXTENDED (constant folding, operator
# fusions) gives the same model on every x86/ARM CPU; ALL adds layout changes for this CPU's
# vector width, so those are redone at each load, where they are cheap.
EXPORT_LEVEL = "ORT_ENABLE_EXTENDED"


def _ort() -> ModuleType:
    return engine_module("onnxruntime", OnnxRuntimeBackend)


class OnnxRuntimeBackend(onnx_graph.OnnxBackend):
    """Runs kiln-external graphs with onnxruntime's CPU execution provider."""

    name = "onnxruntime"
    package = "onnxruntime onnx"

    def __init__(self, *, num_threads: int = 1) -> None:
        """num_threads: onnxruntime's intra-op threads. One by default: the engine runs as a
        step between kiln's own kernels, which already use every core the device allows
        (its thread pool), and executors may run concurrently in several threads; a second pool of
        threads per session would oversubscribe the cores."""
        self.num_threads = num_threads
        self._session: onnxruntime.InferenceSession | None = None
        self._graph: dict | None = None
        self._constants: dict[str, np.ndarray] = {}

    @classmethod
    def engine_key(cls) -> str:
        """onnxruntime's version and the optimization level of exported engines."""
        return f"onnxruntime {_ort().__version__} CPUExecutionProvider {EXPORT_LEVEL} opset " \
               f"{onnx_graph.OPSET}"

    def _options(self, level: str = "ORT_ENABLE_ALL",
                 save_to: str = "") -> onnxruntime.SessionOptions:
        """Session options: num_threads intra-op threads that never spin (a spinning thread
        would steal the core kiln's next kernel needs), sequential execution, optimization
        level, and the file to write the optimized model into, if any."""
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.log_severity_level = 3  # errors only; failures raise anyway
        if save_to:
            options.optimized_model_filepath = save_to
        return options

    def _build_session(self, model: bytes, function: str, **options: str) -> None:
        """The session for model (ONNX bytes); BackendError naming function if it fails."""
        ort = _ort()
        try:
            self._session = ort.InferenceSession(model, sess_options=self._options(**options),
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own (pybind) exception types
            raise BackendError(f"onnxruntime could not build external function {function!r}: "
                               f"{e}") from e
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_names = [o.name for o in self._session.get_outputs()]

    def init(self, graph: dict, constants: dict[str, np.ndarray]) -> None:
        """Build the ONNX model of graph and a session from it. graph and constants are
        kept (not copied) in case export_engine is asked for."""
        model = onnx_graph.build_model(graph, constants, checker=type(self))
        self._build_session(onnx_graph.serialize(model, graph["function"]), graph["function"])
        self._graph, self._constants = graph, constants

    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        """One session run; its results are copied into outputs."""
        results = self._session.run(self._output_names,
                                    dict(zip(self._input_names, inputs, strict=True)))
        for out, result in zip(outputs, results, strict=True):
            np.copyto(out, result)

    def export_engine(self) -> bytes | None:
        """The model after onnxruntime's portable graph optimizations (EXPORT_LEVEL), so a
        load skips building the ONNX model and those optimizations. Needs init first."""
        if self._graph is None:
            return None
        function = self._graph["function"]
        model = onnx_graph.build_model(self._graph, self._constants, checker=type(self))
        exporter = OnnxRuntimeBackend(num_threads=self.num_threads)
        with work_folder("ort-export") as folder:
            path = folder / "optimized.onnx"
            exporter._build_session(onnx_graph.serialize(model, function), function,
                                    level=EXPORT_LEVEL, save_to=str(path))
            return path.read_bytes()

    def import_engine(self, data: bytes) -> bool:
        """Build the session from an exported model instead of calling init; False when
        this onnxruntime cannot load it (kiln then builds the engine again)."""
        try:
            self._build_session(data, "(prebuilt engine)")
        except BackendError:
            return False
        return True
