"""Shared test set-up: root-only test directories and their skip policy.

Tests under dataplane/, e2e/, security/ and docker/ need root.  Outside root they skip,
unless CALICO_REQUIRE_ROOT_TESTS=1 (CI), where a skip would hide a failure,
so they fail instead.
"""

import os
import pathlib

import pytest

# As calico.common.metrics does for the components: prometheus_client reads
# this when first imported, and test modules import its parser at
# collection, before any component module (issue: `_created` series in the
# exposition depended on which test ran first).
os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")

ROOT_DIRS = {"dataplane", "e2e", "security", "docker"}
TESTS_DIR = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    is_root = os.geteuid() == 0
    required = os.environ.get("CALICO_REQUIRE_ROOT_TESTS") == "1"
    for item in items:
        parts = pathlib.Path(item.fspath).relative_to(TESTS_DIR).parts
        if parts and parts[0] in ROOT_DIRS:
            item.add_marker(pytest.mark.root)
            if not is_root:
                if required:
                    raise pytest.UsageError(
                        f"CALICO_REQUIRE_ROOT_TESTS=1 but not root: cannot run {item.nodeid}")
                item.add_marker(pytest.mark.skip(reason="needs root"))


# Root tests use fixed names (namespaces, lab prefixes, the Docker test's
# dockerds, loopback ports), so two runs on one machine (two clones, two
# engineers) would trip over each other.  A run holding any root test takes
# this machine-wide lock before its first test (not at its first root test:
# a module's shared fixtures, an e2e lab or the Docker set-up, are set up
# before any test's own) and holds it until the run ends; another such run
# waits for it.  ``root_lock`` takes it too (for a fixture that must be sure).
ROOT_LOCK_PATH = "/tmp/calico-root-tests.lock"
_root_lock_handle = None


def _take_root_lock() -> None:
    """Take the machine-wide lock (once per run; held until the run ends)."""
    global _root_lock_handle
    if _root_lock_handle is None:
        import fcntl

        _root_lock_handle = open(ROOT_LOCK_PATH, "w")
        fcntl.flock(_root_lock_handle, fcntl.LOCK_EX)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    if os.geteuid() == 0 and any(item.get_closest_marker("root") is not None for item in session.items):
        _take_root_lock()


@pytest.fixture(scope="session")
def root_lock():
    _take_root_lock()


@pytest.fixture(autouse=True)
def _machine_wide_root_lock(request):
    if request.node.get_closest_marker("root") is not None:
        _take_root_lock()
    yield


@pytest.fixture(scope="session")
def cluster_secret_file(tmp_path_factory):
    """The test cluster's secret (tests/testkeys.py) as a file, mode 0600,
    for the real processes; the fake peers derive their keys from it."""
    import testkeys

    return testkeys.write_secret_file(str(tmp_path_factory.mktemp("secret") / "cluster.secret"))
