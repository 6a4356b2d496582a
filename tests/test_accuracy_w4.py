"""ResNet-20 W4A8 on all 10,000 CIFAR-10 test images with MSE calibration, clipping, bias correction
and AdaRound or GPTQ (slow: AdaRound a few minutes). The library is built with the 4-bit integers stored unpacked
(`benchmarks/accuracy.py: store_w4_unpacked`), as the accuracy table is: the same integer graph."""
import os
import sys

import pytest

from conftest import ROOT, needs_shared, shared_path

pytestmark = [needs_shared, pytest.mark.slow]


@pytest.mark.parametrize("row", ["W4A8 mse clip adaround", "W4A8 mse clip gptq"])
def test_w4a8_data_aware_rounding_full_test_set(cifar_norm, tmp_path, row):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import accuracy

    from dyadic.frontend.data import load_npz

    shapes = {"input": (-1, 3, 32, 32)}
    calib, _ = load_npz(shared_path("data", "cifar10_calib.npz"), shapes, cifar_norm)
    test, labels = load_npz(shared_path("data", "cifar10_test.npz"), shapes, cifar_norm)
    r = accuracy.run_row(accuracy.ROWS[row], calib, test, labels)
    assert r["self_check"].startswith("bit-exact")
    assert r["top1"] >= W4A8_BAR, r["top1"]


W4A8_BAR = 0.9120  # the target
