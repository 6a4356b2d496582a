"""Errors a user can act on. Every one is caught by the CLI, printed as one paragraph, exit code 2."""


class DyadicError(Exception):
    """Base class: a problem with the user's input or request, not a bug in dyadic."""


class ModelError(DyadicError):
    """The model file is not a usable ONNX model (unreadable, unsupported ops, dynamic spatial shape)."""


class DataError(DyadicError):
    """A data file (.npz) does not match the model: missing keys, wrong shapes, wrong dtype."""


class VerificationError(DyadicError):
    """An invariant of the integer graph does not hold after a pass (names the pass)."""


class BudgetError(DyadicError):
    """A latency/memory/BOPs budget cannot be met; the message says the smallest feasible value."""


class TargetError(DyadicError):
    """An unknown or inconsistent target request (preset, --cpu, --arch, --rpc address)."""


class ToolchainError(DyadicError):
    """A tool a target needs is missing or failed (cross compiler, nvcc, qemu, runtime wheels, RPC)."""
