import pytest

from tests.engine.synthetic import make_splits


@pytest.fixture(scope="session")
def patch_splits():
    return make_splits()
