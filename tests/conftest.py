import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def shared_path(*parts: str) -> str:
    return os.path.join(SHARED, *parts)


needs_shared = pytest.mark.skipif(not os.path.isfile(shared_path("models", "resnet20_cifar10.onnx")),
                                  reason="../shared (real model and CIFAR-10 data) is not beside the checkout")


@pytest.fixture(scope="session")
def cifar_norm():
    from dyadic.frontend.data import Normalize

    return Normalize(MEAN, STD)


@pytest.fixture(scope="session")
def resnet20_build(tmp_path_factory, cifar_norm):
    """ResNet-20 (real weights) compiled once per session with 256 real calibration images."""
    import dyadic
    from dyadic.compiler import input_shapes
    from dyadic.frontend.data import load_npz
    from dyadic.frontend import import_onnx

    model = shared_path("models", "resnet20_cifar10.onnx")
    calib, _ = load_npz(shared_path("data", "cifar10_calib.npz"), input_shapes(import_onnx(model)), cifar_norm)
    out = str(tmp_path_factory.mktemp("resnet20"))
    res = dyadic.compile(model, out, calib, calib_source="cifar10_calib.npz")
    return res, out


@pytest.fixture
def rng():
    """A fixed-seed generator per test (the pass tests' Before/Expected inputs)."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Latency measurements cached per test session, never in the user's cache."""
    old = os.environ.get("DYADIC_CACHE_DIR")
    os.environ["DYADIC_CACHE_DIR"] = str(tmp_path_factory.mktemp("dyadic-cache"))
    yield
    if old is None:
        os.environ.pop("DYADIC_CACHE_DIR", None)
    else:
        os.environ["DYADIC_CACHE_DIR"] = old
