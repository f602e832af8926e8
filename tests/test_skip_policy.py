"""tests/skip_policy.py: under CI / OPTSTEPS_STRICT_SKIPS=1 only tests marked gpu may skip; a test-level skip
becomes a failure of that test, a collection-time (module-level importorskip) skip fails the session."""

import pytest
import skip_policy

pytest_plugins = ["pytester"]

SKIPS = """
import pytest


def test_skip_in_test():
    pytest.skip("no widget")


@pytest.mark.skipif(True, reason="never here")
def test_skipif():
    pass


@pytest.mark.gpu
def test_gpu():  # skipped by the policy without CUDA, by itself with it: allowed either way
    pytest.skip("no cuda here")


@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False
"""
MODULE_SKIP = """
import pytest

pytest.importorskip("no_such_module_for_optsteps_tests", reason="needs no_such_module")


def test_never():
    pass
"""


def run(pytester, monkeypatch, modules, **env):
    for k in ("CI", "OPTSTEPS_STRICT_SKIPS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a CUDA GPU\naddopts = --strict-markers\n")
    pytester.makepyfile(**modules)
    return pytester.runpytest_inprocess(
        "-p", "skip_policy", "-rs", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning"
    )  # already imported


ALL = {"test_plain": "def test_ok():\n    pass\n", "test_skips": SKIPS, "test_module_skip": MODULE_SKIP}


def test_without_ci_skips_stay_skips(pytester, monkeypatch):
    r = run(pytester, monkeypatch, ALL)
    assert r.ret == 0
    r.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert "disallowed skips" not in r.stdout.str()


@pytest.mark.parametrize("env", [{"OPTSTEPS_STRICT_SKIPS": "1"}, {"CI": "true"}, {"CI": "1"}])
def test_strict_turns_non_gpu_skips_into_failures(pytester, monkeypatch, env):
    r = run(pytester, monkeypatch, ALL, **env)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    # call-phase skip → failed; skipif (setup phase) → error; the gpu skip and the xfail stay as they are;
    # the module skip is still counted as skipped, but listed and failing the session
    r.assert_outcomes(passed=1, failed=1, errors=1, skipped=2, xfailed=1)
    out = r.stdout.str()
    assert "disallowed skips (only tests marked gpu may skip)" in out
    r.stdout.fnmatch_lines(
        [
            "*test_module_skip.py [[]collection[]]: needs no_such_module",
            "*test_skips.py::test_skip_in_test [[]call[]]: no widget",
            "*test_skips.py::test_skipif [[]setup[]]: never here",
        ]
    )
    assert "test_gpu" not in out.split("disallowed skips")[1]


def test_a_module_level_importorskip_alone_fails_the_run(pytester, monkeypatch):
    r = run(
        pytester,
        monkeypatch,
        {"test_plain": "def test_ok():\n    pass\n", "test_module_skip": MODULE_SKIP},
        OPTSTEPS_STRICT_SKIPS="1",
    )
    r.assert_outcomes(passed=1, skipped=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["*test_module_skip.py [[]collection[]]: needs no_such_module"])


def test_strict_skips_can_be_turned_off_under_ci(pytester, monkeypatch):
    r = run(pytester, monkeypatch, ALL, CI="true", OPTSTEPS_STRICT_SKIPS="0")
    assert r.ret == 0
    r.assert_outcomes(passed=1, skipped=4, xfailed=1)


def test_the_repository_conftest_uses_the_policy(request):
    pm = request.config.pluginmanager
    for name in (
        "pytest_runtest_makereport",
        "pytest_make_collect_report",
        "pytest_collection_modifyitems",
        "pytest_sessionfinish",
        "pytest_terminal_summary",
    ):
        impls = getattr(pm.hook, name).get_hookimpls()
        assert any(h.function is getattr(skip_policy, name) for h in impls), name
