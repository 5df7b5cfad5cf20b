"""What every ``python -m helpers.<topic>`` does with an error.

A known course error (a wrong setting, a missing file, a damaged checkpoint, ...)
prints one line that says what is wrong and the fix, and the command exits 2.
Tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

#: exit code of a known course error
ERROR_EXIT = 2


def known_errors() -> tuple[type[BaseException], ...]:
    """The exception types whose message is already the whole story (imported lazily)."""
    from .data_files import DatasetDownloadError, DiskFullError, EncodedFileError, UnsafeWriteError
    from .download import DownloadError, NotEnoughDiskError
    from .inference import AdapterMismatchError, ExportTargetError, PromptTooLongError
    from .models import GpuPlacementError, PrecisionError, TokenizerFilesError
    from .spec import SpecError
    from .validation import DataValidationError
    from .workspace import MissingArtifactError

    found = [SpecError, MissingArtifactError, DataValidationError, DatasetDownloadError, EncodedFileError,
             UnsafeWriteError, DiskFullError, DownloadError, NotEnoughDiskError, GpuPlacementError,
             PrecisionError, TokenizerFilesError, ExportTargetError, PromptTooLongError, AdapterMismatchError]
    try:
        from .checkpoints import CheckpointError, RunLockedError

        found += [CheckpointError, RunLockedError]
    except ImportError:  # pragma: no cover
        pass
    try:
        from .tracking import SwanLabSetupError

        found.append(SwanLabSetupError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def run_cli(work: Callable[[], int], debug: bool = False) -> int:
    """Run a CLI's body; known course errors become one line on stderr and exit code 2."""
    try:
        return work()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - sorted below
        if debug or not isinstance(err, known_errors()):
            raise
        message = " ".join(str(err).split("\n")) if len(str(err)) < 400 else str(err)
        print(f"error: {message}", file=sys.stderr)
        if not debug:
            print("(add --debug for the full traceback)", file=sys.stderr)
        return ERROR_EXIT
