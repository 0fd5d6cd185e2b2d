"""Shared fixtures. pytest finds the project's packages through pyproject.toml (pythonpath = ["."])."""

import pytest


@pytest.fixture
def tiny_dataset(tmp_path):
    """A folder with ``images/`` and ``masks/``: 6 synthetic 24x32 (H x W) PNG pairs, binary 0/255 masks."""
    from utils.synthetic import write_synthetic_dataset

    root = tmp_path / "tiny"
    write_synthetic_dataset(root, num_samples=6, image_size=(24, 32), seed=0)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests: the models are tiny, and on a busy 2-core machine
    a second OpenMP thread makes every op wait for the scheduler (bf16 inference measured ~100x
    slower), not faster. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of ``tests.helpers.tiny_model()`` (binary, RGB, 16x16), written once per run."""
    from tests.helpers import tiny_model, write_checkpoint

    return write_checkpoint(tiny_model(), tmp_path_factory.mktemp("checkpoints") / "tiny.pth")
