import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a 2-core machine: with several threads, spin-waiting costs more than it gains.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
