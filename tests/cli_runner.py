"""Run a ``python -m helpers.<module>`` command inside the test process, as its own process would see it.

``run_cli("data", ["check", "x.json"], env={...}, cwd=folder)`` calls ``helpers.data.main(argv)`` with
exactly ``env`` as the environment (nothing of the test process's own), ``cwd`` as the working folder,
and stdout/stderr captured (the library loggers' handlers included). What the interpreter would do
with the outcome is done here too: the return value or ``SystemExit`` code is the exit code, an
uncaught exception prints its traceback to stderr and exits 1. Everything is restored afterwards.

One real ``python -m`` run per entry point (tests/test_errors.py) proves that the module runs as a
script; every other command-line test runs here, without a new interpreter importing torch again.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@contextlib.contextmanager
def exact_environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` is exactly ``env`` inside the block."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({key: str(value) for key, value in env.items()})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def working_folder(path: Path) -> Iterator[None]:
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    # logging.lastResort follows sys.stderr by itself (its stream is a read-only property)
    return [h for lg in loggers for h in getattr(lg, "handlers", [])
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and not isinstance(getattr(type(h), "stream", None), property)]


@contextlib.contextmanager
def captured_output() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """sys.stdout/sys.stderr, and every logging handler that wrote to them, go to two buffers."""
    out, err = io.StringIO(), io.StringIO()
    old = {id(sys.stdout): out, id(sys.stderr): err, id(sys.__stdout__): out, id(sys.__stderr__): err}
    moved = [(h, h.stream) for h in _stream_handlers() if id(h.stream) in old]
    for handler, stream in moved:
        handler.setStream(old[id(stream)])
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


def exit_code(value) -> tuple[int, str]:
    """What the interpreter makes of ``sys.exit(value)``: (exit code, text printed to stderr)."""
    if value is None:
        return 0, ""
    if isinstance(value, int):
        return value, ""
    return 1, f"{value}\n"


def run_cli(module: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> CliResult:
    """``python -m helpers.<module> *argv`` with environment ``env`` in folder ``cwd``, in this process.

    ``module`` with a dot is a full module name (``bench.cpu``)."""
    main = importlib.import_module(module if "." in module else f"helpers.{module}").main
    with exact_environment(env), working_folder(cwd), captured_output() as (out, err):
        try:
            code, text = exit_code(main([str(a) for a in argv]))
        except SystemExit as stop:
            code, text = exit_code(stop.code)
        except Exception:  # noqa: BLE001 - what an uncaught exception does to a script
            code, text = 1, traceback.format_exc()
        err.write(text)
    return CliResult(code, out.getvalue(), err.getvalue())
