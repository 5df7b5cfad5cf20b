"""Drop the native libraries a GPU box cannot use from a wheel, so the wheels fit one transfer.

    python -m bench.trim_wheel .whl/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl \\
        --drop 'libbitsandbytes_cuda11*' 'libbitsandbytes_cuda12[14]*' 'libbitsandbytes_rocm*' 'libbitsandbytes_xpu*'

bitsandbytes ships one library per CUDA/ROCm/XPU version (129 MB unpacked, 43 MB packed); it loads
only the one matching ``torch.version.cuda``. The wheel is rewritten in place with the dropped files
also removed from its ``RECORD`` (pip installs it as before).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import zipfile
from pathlib import Path


def trim(wheel: Path, patterns: list[str]) -> list[str]:
    """Rewrite ``wheel`` without the members whose file name matches a pattern; return what was dropped."""
    wheel = Path(wheel)
    partial = wheel.with_name(wheel.name + ".partial")
    dropped = []
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            name = item.filename.rsplit("/", 1)[-1]
            if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
                dropped.append(item.filename)
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode("utf-8").splitlines(keepends=True)
                data = "".join(line for line in lines
                               if not any(fnmatch.fnmatch(line.split(",", 1)[0].rsplit("/", 1)[-1], pattern)
                                          for pattern in patterns)).encode("utf-8")
            target.writestr(item, data)
    os.replace(partial, wheel)
    return dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trim_wheel", description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--drop", nargs="+", required=True, help="file-name patterns to drop (fnmatch)")
    args = parser.parse_args(argv)
    before = args.wheel.stat().st_size
    dropped = trim(args.wheel, args.drop)
    print(f"dropped {len(dropped)} files; {before / 2**20:.1f} MiB -> {args.wheel.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
