"""The exceptions kiln raises on purpose; all derive from KilnError.

Shared by the compiler and the runtime, so it imports nothing from either.
"""


class KilnError(Exception):
    """Base class of every error kiln raises on purpose."""


class UnsupportedOpError(KilnError):
    """The model uses operators (or operator forms) kiln cannot compile."""


class NotConstantError(UnsupportedOpError):
    """A value an op needs at compile time (a shape, axes, pads...) depends on model inputs."""

    def __init__(self, message: str, value_name: str = "") -> None:
        super().__init__(message)
        self.value_name = value_name


class ShapeError(KilnError):
    """A shape or dtype is unknown, inconsistent or not what an operator expects."""


class ModelImportError(KilnError):
    """A model file cannot be read or is malformed."""


class LimitError(KilnError):
    """A model needs more memory than a limit allows (a folded constant, the memory plan),
    or a limit is set to something that is not a byte count."""


class VerificationError(KilnError):
    """The IR breaks an invariant (found by the verifier between passes)."""


class CompileError(KilnError):
    """The C toolchain failed or is missing."""


class FormatError(KilnError):
    """An artifact is not a kiln library, is damaged, or has an unsupported format version."""


class CompatibilityError(KilnError):
    """An artifact was built for another machine (architecture or CPU features)."""


class InputError(KilnError):
    """An input or weight (given at run time, or to build/bind) has the wrong name, shape or
    dtype, or is missing."""


class ExportError(KilnError):
    """An export was asked for in a form kiln cannot write (unknown suffix, bad path)."""


class BackendError(KilnError):
    """An external engine (a `kiln.backends` backend) is unknown, not installed here, or
    failed to build or run a function handed to it."""
