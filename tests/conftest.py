import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny import make_tiny_model  # noqa: E402


def pytest_configure(config):
    """Under pytest-xdist, each worker gets its share of the cores: oversubscribed torch threads on a small machine
    make the organism's tiny matrix products several times slower, not faster."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_dir_other(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny2") / "model", seed=1)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from palimpsest.models import load_model

    return load_model(tiny_dir)


# ---------------------------------------------------------------- the model organism (built once, cached on disk)


@pytest.fixture(scope="session")
def organism_setup():
    from palimpsest.demo import organism_setup as setup

    return setup(0)


@pytest.fixture(scope="session")
def organism_dir(organism_setup) -> Path:
    return organism_setup.pre_dir


@pytest.fixture(scope="session")
def organism_concept(organism_setup):
    return organism_setup.concept


@pytest.fixture(scope="session")
def organism_world(organism_setup):
    return organism_setup.world


def _pair(organism_setup, method):
    from palimpsest.demo import organism_pair

    return organism_pair(method, organism_setup)


@pytest.fixture(scope="session")
def organism_pair_suppress(organism_setup):
    return _pair(organism_setup, "suppress")


@pytest.fixture(scope="session")
def organism_pair_oracle(organism_setup):
    return _pair(organism_setup, "oracle")


@pytest.fixture(scope="session")
def organism_pair_ga(organism_setup):
    return _pair(organism_setup, "ga")


@pytest.fixture(scope="session")
def organism_floor(organism_setup):
    from palimpsest.models import load_model

    return load_model(organism_setup.floor_dir, name="floor")


@pytest.fixture(scope="session")
def sae_cache() -> Path:
    """The shared cache root (SAEs are keyed by model hash, site, corpus and config inside it)."""
    from palimpsest.organism import cache_root

    return cache_root(None)
