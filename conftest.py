"""How ``make test`` shares the suite between two worker processes (pytest-xdist, ``-n 2``).

A test module runs on one worker, so its module fixtures run once. All notebooks run on one worker, in
their order, in one unit: a later notebook reads what an earlier one wrote (04's adapter in 05 and 06).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

#: the units that take a minute or more, longest first (the durations ``make test`` prints show them): they start
#: first, so that the short modules fill both workers at the end instead of one long unit running alone
LONGEST_FIRST = (
    "notebooks",
    "tests/test_solutions.py",
    "tests/test_scale_out.py",
    "tests/test_train.py",
    "tests/test_gpu_run.py",
    "tests/test_qlora.py",
    "tests/test_gpu_check.py",
    "tests/test_small_profile.py",
)


def _scope(nodeid: str) -> str:
    """The unit a test runs in: "notebooks" for every notebook cell, else its test module."""
    if ".ipynb" in nodeid:
        return "notebooks"
    return nodeid.split("::", 1)[0]


def _start_order(scope: str) -> int:
    return LONGEST_FIRST.index(scope) if scope in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.hookimpl(optionalhook=True)   # a hook of pytest-xdist: without it (-p no:xdist) it is not called
def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduler with the notebooks as one scope and every test module as its own, the
    longest units first."""
    if config.getvalue("dist") == "each":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndNotebooks(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            # the next unit a worker gets is the longest one left (the queue is otherwise in xdist's order)
            self.workqueue.move_to_end(min(self.workqueue, key=_start_order), last=False)
            super()._assign_work_unit(node)

    return ModulesAndNotebooks(config, log)


def _starts_workers(config) -> bool:
    """True in the controlling process of an xdist run (``-n N``), before its workers start."""
    return bool(config.getoption("numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config):
    """Each worker gets its share of the cores as torch threads (OMP_NUM_THREADS, unless already set): two
    workers with two threads each on two cores train the tiny model 2.4x slower than with one each."""
    if _starts_workers(config):
        workers = config.getoption("numprocesses")
        cores = os.cpu_count() or 1
        per_worker = cores // workers if isinstance(workers, int) else 1   # "-n auto": one worker per core
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, per_worker)))


def pytest_sessionstart(session):
    """Build the tiny model once, before any worker starts: two workers must not build one folder at once.
    And say so when a settings file at the repository root (``python -m helpers.environment setup``) will
    reach the CLIs and notebook kernels the suite runs: they read it as a learner's kernel does."""
    from helpers.settings import SETTINGS_FILE

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if SETTINGS_FILE.exists() and reporter is not None and not hasattr(session.config, "workerinput"):
        reporter.write_line(f"note: {SETTINGS_FILE.name} at the repository root is read by the CLIs and notebooks "
                            "this suite runs (its workspace, SwanLab mode, ...); move it away for the run CI makes.")
    if not hasattr(session.config, "workerinput"):
        session.config.stash[_CHECKOUT] = _checkout_changes()
    if _starts_workers(session.config):
        from helpers.download import prepare_model
        from tests.conftest import tiny_spec_for

        prepare_model(tiny_spec_for())


_CHECKOUT = pytest.StashKey[frozenset]()


def _checkout_changes() -> frozenset:
    """``git status`` of the repository (git-ignored paths such as ``workspace/`` left out); empty without git."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(done.stdout.splitlines()) if done.returncode == 0 else frozenset()


def pytest_sessionfinish(session):
    """A test writes into its own temporary folders or the git-ignored workspace, never into the checkout: a file
    the run added or changed there fails the run."""
    if hasattr(session.config, "workerinput") or _CHECKOUT not in session.config.stash:
        return
    new = sorted(_checkout_changes() - session.config.stash[_CHECKOUT])
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"error: the tests wrote into the checkout: {', '.join(new[:10])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
