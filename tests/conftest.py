import os

import pytest
import torch

# the skip policy: only tests marked gpu may skip; under CI / OPTSTEPS_STRICT_SKIPS=1 any other skip fails the run
# (hooks take effect by being imported here: each name needs its own noqa, or ruff's F401 fix drops it)
from skip_policy import (
    pytest_collection_modifyitems,  # noqa: F401
    pytest_configure,  # noqa: F401
    pytest_make_collect_report,  # noqa: F401
    pytest_runtest_makereport,  # noqa: F401
    pytest_sessionfinish,  # noqa: F401
    pytest_terminal_summary,  # noqa: F401
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a module: tiny float64 ops (GMM softmax, the OSS engine's small batches)
    are ~500× slower with 2 intra-op threads on a loaded machine. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
