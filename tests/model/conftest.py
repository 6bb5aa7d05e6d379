import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads; avoids OpenMP oversubscription on busy machines."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
