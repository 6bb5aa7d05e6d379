import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for train_helpers (import-mode=importlib)

from medidiff.io.nifti import write_nifti  # noqa: E402
from train_helpers import blob_volume  # noqa: E402


@pytest.fixture
def nifti_dir(tmp_path):
    d = tmp_path / "data"
    for i in range(4):
        write_nifti(blob_volume(i), d / f"scan{i}.nii.gz")
    return d


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP
    spin-waiting makes 2 threads many times slower than 1."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
