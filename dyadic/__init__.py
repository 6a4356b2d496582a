"""dyadic: an integer-only inference compiler (ONNX -> int8 graph with dyadic rescaling -> TVM library).

    import dyadic
    dyadic.compile("model.onnx", "build/", calib={"input": x_calib})
    m = dyadic.load("build/")          # needs only the TVM runtime
    y = m.run(x)

Importing `dyadic` does not import the TVM compiler; `compile` does.
"""
__version__ = "0.1.0"


def compile(*args, **kwargs):  # noqa: A001  (the user-facing name)
    from dyadic.compiler import compile as _compile

    return _compile(*args, **kwargs)


def load(path: str, threads: int | None = None):
    """A compiled build, runnable with the TVM runtime only (`dyadic.runtime.loader.load`)."""
    from dyadic.runtime.loader import load as _load

    return _load(path, threads)


__all__ = ["compile", "load", "__version__"]
