"""One error type for everything a learner can cause, and what every ``python -m helpers.<topic>`` does with it.

A known course error (a wrong setting, a missing file, a damaged checkpoint, ...) derives from
:class:`CourseError`. :func:`run_cli` prints it as one line that says what is wrong and the fix, and
the command exits 2; a traceback appears only with ``--debug``. Because the check is one base class,
it also holds when a module runs as ``__main__`` (its own classes are new there, the base is not).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

#: exit code of a known course error
ERROR_EXIT = 2
#: how the one line of a known course error starts (a caller reading another command's output looks for it)
ERROR_PREFIX = "error: "
#: the line :func:`run_cli` prints after a course error (tests compare with it, not with its wording)
DEBUG_HINT = "（加上 --debug 可查看完整的 traceback）"


class CourseError(Exception):
    """Something the learner can fix; the message names it and the fix."""


def quiet_interrupt(kind, value, traceback, default=sys.excepthook) -> None:
    """``sys.excepthook`` of a ``python -m helpers.<topic>`` command: Ctrl-C before :func:`run_cli` runs (while
    torch or transformers import) is the same one line as after, not a traceback (a half-finished import may
    raise its own error on top of it)."""
    seen = value
    while seen is not None and not isinstance(seen, KeyboardInterrupt):
        seen = seen.__context__
    if seen is None:
        default(kind, value, traceback)
    else:
        print("已中断", file=sys.stderr)


def run_cli(work: Callable[[], int], debug: bool = False) -> int:
    """Run a CLI's body; course errors become one line on stderr and exit code 2."""
    try:
        code = work()
        sys.stdout.flush()   # a reader that went away (`| head`) shows here, not at the interpreter's exit
        return code
    except BrokenPipeError:
        return reader_gone()
    except KeyboardInterrupt:
        print("已中断", file=sys.stderr)
        return 130
    except (CourseError, UnicodeEncodeError) as err:
        if debug or (isinstance(err, UnicodeEncodeError) and err.reason != "surrogates not allowed"):
            raise
        message = str(err) if isinstance(err, CourseError) else \
            f"路径或文字里有不是 UTF-8 的字节（{err.object[err.start:err.end]!r}）：{UTF8_FIX}，文件夹也用 UTF-8 的名字"
        print(f"{ERROR_PREFIX}{one_line(message)}", file=sys.stderr)
        print(DEBUG_HINT, file=sys.stderr)
        return ERROR_EXIT


#: the fix for text or a path that is not UTF-8 (what Python makes of bytes a terminal in GBK passes)
UTF8_FIX = "请把终端设为 UTF-8（例如 export LANG=C.UTF-8）后重新输入"


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (undecodable bytes from the system arrive as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def reader_gone() -> int:
    """The exit code after the reader of stdout went away (``| head``): Python's documented recipe, the rest of the
    output goes nowhere and no traceback is printed about it."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def one_line(text: str) -> str:
    """A message of several lines (a data report: a summary, then a line per problem) as one line: each line's
    spaces collapsed, the lines joined by "；" unless one already ends in punctuation."""
    out = ""
    for line in (" ".join(line.split()) for line in text.splitlines()):
        if line:
            out += ("" if not out else " " if out[-1] in ".:;,!?" else "" if out[-1] in "。；：，！？" else "；") + line
    return out


#: argparse's own error messages (a mistyped flag, a missing subcommand) in the course's language
ARGPARSE_MESSAGES = (
    (r"unrecognized arguments: (.*)", r"不认识的参数 \1（--help 列出全部参数）"),
    (r"argument (\S+): invalid choice: (.*) \(choose from (.*)\)", r"参数 \1 的值 \2 无效，可选：\3"),
    (r"the following arguments are required: (.*)", r"缺少参数：\1（--help 列出全部参数）"),
    (r"argument (\S+): expected one argument", r"参数 \1 后面要跟一个值（值以 - 开头时写成 \1=值）"),
    (r"argument (\S+): ignored explicit argument (.*)", r"参数 \1 不接受值 \2"),
    (r"ambiguous option: (\S+) could match (.*)", r"参数 \1 不明确，可能是：\2"),
    (r"argument (\S+): invalid int value: (.*)", r"参数 \1 应当是整数，实际是 \2"),
    (r"argument (\S+): invalid float value: (.*)", r"参数 \1 应当是数字，实际是 \2"),
    (r"argument (\S+): invalid \S+ value: (.*)", r"参数 \1 的值 \2 无效"),
    (r"argument (\S+): (.*)", r"参数 \1：\2"),   # a value the argument's type refused (its message is Chinese)
)


class _ChineseHelpFormatter(argparse.HelpFormatter):
    def add_usage(self, usage, actions, groups, prefix=None):
        super().add_usage(usage, actions, groups, "用法：" if prefix is None else prefix)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose own words are Chinese: its error messages (exit 2, the usage line first, as
    before) and its ``--help`` (usage line, section titles, the -h line); subcommands' parsers are of this class."""

    def __init__(self, *args, add_help: bool = True, parents=(), **kwargs):
        kwargs.setdefault("formatter_class", _ChineseHelpFormatter)
        super().__init__(*args, add_help=False, **kwargs)
        self._positionals.title, self._optionals.title = "参数", "选项"
        if add_help:
            self.add_argument("-h", "--help", action="help", default=argparse.SUPPRESS, help="显示这条帮助并退出")
        for parent in parents:   # argparse's own step, after the titles: a parent's sections join these
            self._add_container_actions(parent)
            self._defaults.update(parent._defaults)

    def parse_known_args(self, args=None, namespace=None):
        self._typed = list(sys.argv[1:] if args is None else args)   # what error() may point at
        for text in self._typed:   # a terminal in another encoding (GBK) passes bytes that are not UTF-8
            if not is_utf8(text):
                self.error(f"{text!r} 不是 UTF-8 文本：{UTF8_FIX}")
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        for pattern, chinese in ARGPARSE_MESSAGES:
            message = re.sub(f"^{pattern}$", chinese, message)
        typed = getattr(self, "_typed", [])
        dashed = [a for a in typed if a.startswith("-") and not re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", a, re.ASCII)]
        if dashed and "--" not in typed and message.startswith("缺少参数"):   # `ask "-你好"`: taken for a flag
            message += f"。以 - 开头的文字要放在最后、前面加 --（选项都写在 -- 之前），例如 -- {dashed[0]!r}"
        super().error(message)


def _number(text: str, kind: type, ok: Callable, must: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"应当是{'整数' if kind is int else '数字'}，实际是 {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"必须{must}，实际是 {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    return _number(text, int, lambda v: v >= 1, "至少为 1")


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    return _number(text, float, lambda v: 0 < v < 1, "在 0 和 1 之间（例如 0.05）")
