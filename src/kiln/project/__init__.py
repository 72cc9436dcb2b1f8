"""Standalone C projects from Model Library Format archives (docs/mlf.md, "Project
generator"): `generate` writes one, `footprint` measures one built for a Cortex-M board.

Reads archives only (standard library, NumPy, safetensors): nothing of the compiler.
"""

from .boards import BOARDS, DEFAULT_BOARD, Board
from .footprint import footprint, footprint_text
from .generate import TEMPLATES, generate

__all__ = ["BOARDS", "DEFAULT_BOARD", "TEMPLATES", "Board", "footprint", "footprint_text",
           "generate"]
