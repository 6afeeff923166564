"""Test-suite configuration: the `gpu` marker. Tests marked `gpu` are skipped unless a CUDA
device is visible: to DALI, or to torch where DALI is not installed (the DALI-free kernel tests of
tests/gpu/ on a GPU machine without DALI). On a CPU-only machine they still import and collect."""
import pytest


def cuda_device_count() -> int:
    """CUDA devices visible to DALI (to torch without DALI); 0 without a GPU or driver (never
    raises)."""
    try:
        from nvidia.dali import backend
    except ImportError:
        try:
            import torch

            return int(torch.cuda.device_count())
        except Exception:
            return 0
    try:
        return int(backend.GetCUDADeviceCount())
    except Exception:  # no driver, no libcuda: DALI reports it as an error on some versions
        return 0


HAS_GPU = cuda_device_count() > 0
SKIP_WITHOUT_GPU = pytest.mark.skip(reason="needs a CUDA device")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped when DALI sees none")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    for item in items:
        # The marker, not item.keywords: keywords also hold directory names (tests/gpu/).
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(SKIP_WITHOUT_GPU)


@pytest.fixture
def gpu():
    """Skips the test without a CUDA device (for tests that use a GPU without the marker)."""
    if not HAS_GPU:
        pytest.skip("needs a CUDA device visible to DALI")
    return 0


# Stores shared by the expression tests (tests/test_expression_*.py), written once per session.

@pytest.fixture(scope="session")
def counts(tmp_path_factory):
    """biodali.synth counts (float32, integer-valued) with two all-zero rows: expression_utils.Store."""
    from expression_utils import counts_store

    return counts_store(tmp_path_factory.mktemp("expression"))


@pytest.fixture(scope="session")
def int_counts(tmp_path_factory):
    """A small store whose X is int32."""
    from expression_utils import int_store

    return int_store(tmp_path_factory.mktemp("expression_int"))
