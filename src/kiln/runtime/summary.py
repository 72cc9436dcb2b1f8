"""What `kiln inspect` reports about a checked library file, as plain data (the CLI prints
it as tables or JSON)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from .signing import signature_status


def library_summary(checked: Any, path: str) -> dict[str, Any]:
    """What `kiln inspect` reports about a checked library file, as plain data."""
    m = checked.blob.manifest
    models = {}
    for name in sorted(m["models"]):
        spec = m["models"][name]
        models[name] = {
            "executor": spec["executor"],
            "inputs": [{k: e[k] for k in ("name", "shape", "dtype")} for e in spec["inputs"]],
            "outputs": [{k: e[k] for k in ("name", "shape", "dtype")} for e in spec["outputs"]],
            "kernels": len(spec["kernels"]),
            "ops": dict(Counter(k["label"] for k in spec["kernels"]).most_common()),
            "params": len(spec["params"]),
            # What the weights take, whether in the file or apart (weight None: not packaged).
            "param_bytes": sum(math.prod(p["shape"]) * np.dtype(p["dtype"]).itemsize
                               for p in spec["params"]),
            "params_packaged": all(p["weight"] is not None for p in spec["params"]),
            "memory_peak_bytes": spec["arena_bytes"],
            "memory_unplanned_bytes": spec["memory"]["unplanned_bytes"],
            "source": spec.get("source", {}),
            # what went to external engines (docs/byoc.md): the nodes each function runs
            "externals": {fn: {"backend": e["backend"], "prebuilt": "engine" in e,
                               "ops": [n["op"] for n in e["graph"]["nodes"]
                                       if n.get("op") not in ("input", "constant")]}
                          for fn, e in spec.get("externals", {}).items()},
        }
    blob = checked.blob
    return {"path": path, "kiln_version": m["kiln_version"],
            "format_version": f"{blob.major}.{blob.minor}", "target": m["target"],
            "file_bytes": checked.file_size, "packed_bytes": checked.packed_size,
            "signature": signature_status(blob.signer, blob.signature),
            "weights_stored_bytes": sum(r["nbytes"] for r in m["weights"]), "models": models}
