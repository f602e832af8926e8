"""Skip policy (a pytest plugin; tests/conftest.py imports its hooks).

Only tests marked ``gpu`` may skip; they are skipped here when CUDA is absent. Under ``CI`` (any value but
empty/0/false/no) or ``OPTSTEPS_STRICT_SKIPS=1`` (``OPTSTEPS_STRICT_SKIPS=0`` turns it off even under CI) any
other skip fails the run:

- a test-level skip (``pytest.skip`` in a test or fixture, ``skipif``, ``importorskip`` inside a test) is turned
  into a failure of that test, with the skip reason;
- a collection-time skip (a module-level ``pytest.importorskip`` / ``pytest.skip(allow_module_level=True)``,
  which shows as "1 skipped" for the whole module) cannot be a test failure, since no test was collected:
  it is listed in a "disallowed skips" section and the session's exit status is set to 1 (tests failed).

A module-level skip is never allowed, even for GPU-only modules: mark the tests ``gpu`` instead. xfail is not
a skip and is left alone.
"""

from __future__ import annotations

import os

import pytest

GPU_REASON = "needs a CUDA GPU (marked gpu)"
_DISALLOWED = pytest.StashKey[list]()


def strict_skips() -> bool:
    own = os.environ.get("OPTSTEPS_STRICT_SKIPS", "").strip().lower()
    if own:
        return own not in ("0", "false", "no")
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_configure(config):
    config.stash[_DISALLOWED] = []


def pytest_collection_modifyitems(config, items):
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason=GPU_REASON))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    rep = yield
    if rep.skipped and strict_skips():
        collector.config.stash[_DISALLOWED].append(
            (rep.nodeid or str(collector.path), "collection", _reason(rep.longrepr))
        )
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.skipped and not hasattr(rep, "wasxfail") and item.get_closest_marker("gpu") is None and strict_skips():
        why = _reason(rep.longrepr)
        item.config.stash[_DISALLOWED].append((item.nodeid, rep.when, why))
        rep.outcome = "failed"
        rep.longrepr = (
            f"skipped ({why}), but only tests marked gpu may skip "
            "(CI / OPTSTEPS_STRICT_SKIPS=1: see tests/skip_policy.py)"
        )
    return rep


def pytest_sessionfinish(session, exitstatus):
    if session.config.stash.get(_DISALLOWED, None) and exitstatus in (
        pytest.ExitCode.OK,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bad = config.stash.get(_DISALLOWED, None)
    if bad:
        terminalreporter.section("disallowed skips (only tests marked gpu may skip)", red=True)
        for nodeid, when, why in bad:
            terminalreporter.line(f"{nodeid} [{when}]: {why}")
