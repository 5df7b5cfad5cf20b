"""How ``make test`` shares the suite between two worker processes (pytest-xdist, ``-n 2``).

A test module runs on one worker, so its module fixtures run once. All notebooks run on one worker, in
their order, in one unit: a later notebook reads what an earlier one wrote (04's adapter in 05 and 06).
"""

from __future__ import annotations

import os

#: tests that write the repository's own settings file, which every notebook kernel reads: they run in the
#: notebooks' unit (before the notebooks), never beside a notebook
WITH_THE_NOTEBOOKS = (
    "tests/test_environment.py::test_the_settings_file_reaches_a_kernel_started_without_the_variables",
)


def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduler with the notebooks as one scope and every test module as its own."""
    if config.getvalue("dist") == "each":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndNotebooks(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if ".ipynb" in nodeid or nodeid.startswith(WITH_THE_NOTEBOOKS):
                return "notebooks"
            return nodeid.split("::", 1)[0]

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
    """Build the tiny model once, before any worker starts: two workers must not build one folder at once."""
    if _starts_workers(session.config):
        from helpers.download import prepare_model
        from tests.conftest import tiny_spec_for

        prepare_model(tiny_spec_for())
