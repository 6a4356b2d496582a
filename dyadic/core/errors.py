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


class DataRangeError(DataError):
    """Calibration data, weights, flags or calibrated ranges that are not finite (NaN/Inf) or unusable."""


class OutputError(DyadicError):
    """The output directory cannot be written (a file, not writable, locked by another compile)."""


class BuildDirError(DyadicError):
    """A build directory that cannot be loaded: missing or damaged files, a plan that fails its schema,
    a library whose size or sha256 differs from what the plan records."""


class InputError(DyadicError):
    """Arguments of `run`/`run_int` that do not fit the build (names, dtype, shape, integer range)."""


class InternalError(DyadicError):
    """A bug in dyadic (an exception that is not one of these classes); the CLI logs its traceback."""
