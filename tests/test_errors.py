"""Every ``python -m helpers.<module>`` turns a known mistake into one line and exit code 2.

Each case runs the module the way ``python -m`` does (``runpy.run_module(name, run_name="__main__")``),
so the module's own error classes are created anew as ``__main__``'s, the trap that once let
``DownloadError`` through as a traceback. One case also runs in a fresh Python process.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.errors import DEBUG_HINT, ERROR_EXIT, CourseError, run_cli
from helpers.workspace import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")


def run_as_main(module: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m helpers.<module> argv`` run in this process."""
    monkeypatch.setattr(sys, "argv", [f"helpers/{module}.py", *argv])
    with pytest.raises(SystemExit) as ended:
        runpy.run_module(f"helpers.{module}", run_name="__main__", alter_sys=True)
    captured = capsys.readouterr()
    return ended.value.code, captured.out, captured.err


def assert_one_line(code: int, err: str, *words: str) -> None:
    """Exit 2; the error is one line (then the --debug hint), the last thing printed; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == ERROR_EXIT, err
    assert "Traceback" not in err
    assert [line for line in lines if line.startswith("error: ")] == lines[-2:-1], lines
    assert lines[-1] == DEBUG_HINT and "--debug" in DEBUG_HINT
    for word in words:
        assert word in lines[-2]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty relocated workspace; no course variable of the developer's shell leaks in."""
    for name in list(os.environ):
        if name.startswith("QWEN3_TUTORIAL_"):
            monkeypatch.delenv(name)
    folder = tmp_path / "ws"
    folder.mkdir()
    monkeypatch.setenv("QWEN3_TUTORIAL_WORKSPACE", str(folder))
    monkeypatch.setenv("QWEN3_TUTORIAL_SWANLAB_MODE", "offline")
    return folder


def test_download_without_network_is_one_line(workspace, monkeypatch, capsys, huanhuan_path):
    import modelscope

    from helpers import workspace as files

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'modelscope.cn'")

    monkeypatch.setattr(modelscope, "snapshot_download", offline)
    monkeypatch.setattr(files, "free_disk_gb", lambda path: 500.0)
    monkeypatch.setenv("QWEN3_TUTORIAL_DATASET", str(huanhuan_path))
    code, out, err = run_as_main("download", ["--profile", "full"], monkeypatch, capsys)
    assert_one_line(code, err, "ModelScope", "Qwen/Qwen3-8B", "ConnectionError", "QWEN3_TUTORIAL_MODEL_DIR")
    assert not (workspace / "models" / "modelscope" / "Qwen" / "Qwen3-8B" / "config.json").exists()


def test_data_check_of_a_missing_file(workspace, monkeypatch, capsys):
    code, _, err = run_as_main("data", ["check", str(workspace / "nope.json")], monkeypatch, capsys)
    assert_one_line(code, err, "nope.json", "不存在")


def test_environment_check_with_an_unknown_profile(workspace, monkeypatch, capsys):
    code, _, err = run_as_main("environment", ["check", "--profile", "bogus"], monkeypatch, capsys)
    assert_one_line(code, err, "--profile='bogus'", "full、small、tiny、random8b、auto")


def test_train_with_a_wrong_type(workspace, monkeypatch, capsys):
    code, _, err = run_as_main("train", ["--config", "configs/train/tiny.yaml", "--set", "training.learning_rate=fast"],
                               monkeypatch, capsys)
    assert_one_line(code, err, "training.learning_rate")
    assert not (workspace / "checkpoints").exists()


def test_evaluate_without_an_adapter_never_trains(workspace, monkeypatch, capsys):
    code, _, err = run_as_main("evaluate", ["--config", "configs/train/tiny.yaml"], monkeypatch, capsys)
    assert_one_line(code, err, "python -m helpers.train --config configs/train/tiny.yaml")
    assert not (workspace / "checkpoints").exists()


def test_inference_export_onto_a_file(workspace, monkeypatch, capsys):
    import torch
    from safetensors.torch import save_file

    adapter = workspace / "shared-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}), encoding="utf-8")
    save_file({"lora_A.weight": torch.zeros(1)}, adapter / "adapter_model.safetensors")
    target = workspace / "model.bin"
    target.write_bytes(b"the learner's file")
    code, _, err = run_as_main("inference", ["export", "--config", "configs/train/tiny.yaml", "--checkpoint",
                                             str(adapter), "--target", str(target)], monkeypatch, capsys)
    assert_one_line(code, err, "model.bin", "不是文件夹")
    assert target.read_bytes() == b"the learner's file"


def test_export_points_at_the_command_that_exports(workspace, monkeypatch, capsys):
    code, _, err = run_as_main("export", [], monkeypatch, capsys)
    assert_one_line(code, err, "python -m helpers.inference export")


def test_reset_all_without_a_terminal(workspace, monkeypatch, capsys):
    from helpers.workspace import course_folder

    model = course_folder(workspace / "models" / "tiny-qwen3") / "config.json"   # a model the course built
    model.write_text("{}", encoding="utf-8")
    code, _, err = run_as_main("reset", ["--all"], monkeypatch, capsys)
    assert_one_line(code, err, "--force")
    assert model.is_file()


def test_scale_out_demo_in_a_workspace_it_cannot_write(workspace, monkeypatch, capsys):
    monkeypatch.setenv("QWEN3_TUTORIAL_WORKSPACE", "/proc/course-workspace")
    code, out, err = run_as_main("scale_out", ["--demo"], monkeypatch, capsys)
    assert_one_line(code, err, "/proc")
    assert "accelerate launch --config_file configs/accelerate/ddp.yaml" in out   # the tables came first


def test_every_entry_point_has_a_case_here():
    """Each helpers module that runs as ``python -m`` is driven through its real entry by a test above."""
    entries = {p.stem for p in (REPO_ROOT / "helpers").glob("*.py")
               if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")}
    driven = set(re.findall(r'run_as_main\("(\w+)"', Path(__file__).read_text(encoding="utf-8")))
    assert entries == driven, f"entry points without a case: {sorted(entries - driven)}"


def test_every_help_speaks_the_courses_language(capsys):
    """`--help` of every command and subcommand: argparse's own words (usage, the section titles, the -h line) are
    Chinese like the rest of what the learner reads."""
    import importlib

    entries = sorted(p.stem for p in (REPO_ROOT / "helpers").glob("*.py")
                     if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8") and p.stem != "export")
    for module in entries:
        main = importlib.import_module(f"helpers.{module}").main
        with pytest.raises(SystemExit) as done:
            main(["--help"])
        text = capsys.readouterr().out
        commands = re.findall(r"^ {4}(\w+) ", text, flags=re.M) if "{" in text.split("\n", 1)[0] else []
        for command in commands:       # each subcommand's own --help
            with pytest.raises(SystemExit):
                main([command, "--help"])
            text += capsys.readouterr().out
        assert done.value.code == 0 and text.startswith("用法：python -m helpers."), (module, text[:200])
        assert "显示这条帮助并退出" in text and "选项" in text, module
        assert text.count("\n选项:") == 1 + len(commands), (module, "one options section per help")
        english = [w for w in ("usage:", "options:", "positional arguments", "show this help") if w in text]
        assert not english, (module, english)


def test_run_cli_only_shortens_course_errors():
    class Mine(CourseError):
        pass

    assert run_cli(lambda: (_ for _ in ()).throw(Mine("a\nb"))) == ERROR_EXIT
    with pytest.raises(Mine):
        run_cli(lambda: (_ for _ in ()).throw(Mine("x")), debug=True)
    with pytest.raises(ZeroDivisionError):  # a bug stays a traceback
        run_cli(lambda: 1 / 0)


def test_download_in_a_fresh_process_is_one_line(tmp_path, huanhuan_path):
    """``python -m helpers.download --profile full`` in its own process, ModelScope unreachable."""
    bootstrap = (
        "import runpy, sys, modelscope\n"
        "def offline(*a, **k):\n"
        "    raise ConnectionError(\"Failed to resolve 'modelscope.cn'\")\n"
        "modelscope.snapshot_download = offline\n"
        "sys.argv = ['helpers/download.py', '--profile', 'full']\n"
        "runpy.run_module('helpers.download', run_name='__main__', alter_sys=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TUTORIAL_")}
    env.update(QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"), QWEN3_TUTORIAL_DATASET=str(huanhuan_path),
               PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", bootstrap], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    free = shutil.disk_usage(tmp_path).free / 1e9
    expected = "ConnectionError" if free > 40 else "--workspace ~/autodl-tmp/qwen3-workspace"
    assert_one_line(result.returncode, result.stderr, expected)
    assert not (tmp_path / "ws" / "models" / "modelscope" / "Qwen" / "Qwen3-8B" / "config.json").exists()


@pytest.mark.parametrize("raised", ["raise KeyboardInterrupt",
                                    "try:\n    raise KeyboardInterrupt\nexcept KeyboardInterrupt:\n"
                                    "    raise ModuleNotFoundError('half-imported')"])
def test_ctrl_c_while_a_command_imports_is_one_line(tmp_path, raised):
    """Ctrl-C while ``python -m helpers.train`` still imports transformers (here: a stand-in that is interrupted)."""
    (tmp_path / "transformers").mkdir()
    (tmp_path / "transformers" / "__init__.py").write_text(raised + "\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(tmp_path)])}
    result = subprocess.run([sys.executable, "-m", "helpers.train"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.stderr.strip() == "已中断" and result.returncode != 0, result.stderr
    elsewhere = subprocess.run([sys.executable, "-c", "import helpers, sys; print(sys.excepthook is sys.__excepthook__)"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert elsewhere.stdout.strip() == "True"     # imported by a notebook or a script: Python's own hook stays


def test_a_reader_that_goes_away_is_no_traceback(tmp_path):
    """`python -m helpers.<topic> ... | head -1`: the pipe's reader is gone before the command's output is written."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "ws")}
    process = subprocess.Popen([sys.executable, "-m", "helpers.reset", "--print-executed"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()   # the reader is gone: every write to stdout now fails with EPIPE
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1 and err == "", err


def test_a_message_of_several_lines_is_one_readable_line():
    from helpers.errors import one_line

    report = "bad.json（json）：读到 3 条\n  错误  第 2 条    instruction  是空的\n  警告  第 3 条\n请修正这些行。"
    assert one_line(report) == "bad.json（json）：读到 3 条；错误 第 2 条 instruction 是空的；警告 第 3 条；请修正这些行。"
    assert one_line("a line:\n  next") == "a line: next" and one_line("第一行。\n第二行") == "第一行。第二行"


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path):
    # the hint under every error says "add --debug": learners add it at the end of the command
    from helpers import data, environment
    from helpers.errors import CourseError

    with pytest.raises(CourseError):
        data.main(["check", str(tmp_path / "nothere.json"), "--debug"])
    with pytest.raises(CourseError):
        environment.main(["setup", "--profile", "bogus", "--debug"])
    assert data.main(["check", str(tmp_path / "nothere.json")]) == 2


@pytest.mark.parametrize("module", ["data", "download", "environment", "evaluate", "inference", "reset", "scale_out",
                                    "train"])
def test_argparse_own_errors_speak_the_courses_language(module):
    """A mistyped flag, a wrong choice or a missing subcommand: argparse's own message, translated (exit 2)."""
    from tests.cli_runner import run_cli as run_module

    english = re.compile(r"unrecognized arguments|invalid choice|arguments are required|expected one argument|"
                         r"argument --|invalid \w+ value")
    first = {"data": ["check", "x.json"], "environment": ["check"], "inference": ["ask", "你是谁？"]}.get(module, [])
    cases = [[*first, "--no-such-flag"]] + {"train": [["--recipe", "aoto"]], "environment": [[]],
                                            "data": [[], ["split", "x.json", "out", "--seed", "4a"]],
                                            "scale_out": [["--gpus", "0"]],
                                            "evaluate": [["--limit"]]}.get(module, [])
    for argv in cases:
        done = run_module(module, argv, env={"PATH": os.environ["PATH"]}, cwd=REPO_ROOT)
        last = done.stderr.strip().splitlines()[-1]
        assert done.code == 2 and "error: " in last and not english.search(done.stderr), (argv, done.stderr)
        assert all(word in last for word in argv if word.startswith("--")), (argv, last)


def test_a_message_that_starts_with_a_dash_is_shown_how_to_pass_it(monkeypatch):
    """`ask "-你好"`: argparse reads the text as an unknown flag and says the message is missing; the error says how
    to pass it (after --), and that way works."""
    from tests.cli_runner import run_cli as run_module

    done = run_module("inference", ["ask", "-你好"], env={"PATH": os.environ["PATH"]}, cwd=REPO_ROOT)
    last = done.stderr.strip().splitlines()[-1]
    assert done.code == 2 and "-- '-你好'" in last, done.stderr
    plain = run_module("data", ["check"], env={"PATH": os.environ["PATH"]}, cwd=REPO_ROOT)
    assert plain.code == 2 and " -- " not in plain.stderr      # nothing dashed was typed: no such hint
    for flags in (["data", "split", "x.json", "--eval", "0.1"], ["inference", "ask", "--think"],
                  ["inference", "--version"]):   # an abbreviated or unknown flag is no text: no hint either
        done = run_module(flags[0], flags[1:], env={"PATH": os.environ["PATH"]}, cwd=REPO_ROOT)
        assert done.code == 2 and " -- " not in done.stderr, (flags, done.stderr)
    value = run_module("inference", ["ask", "--system-prompt", "-x", "你好"], env={"PATH": os.environ["PATH"]},
                       cwd=REPO_ROOT)   # a flag's value that starts with a dash: the form that works
    assert value.code == 2 and "--system-prompt=" in value.stderr.strip().splitlines()[-1], value.stderr
    from helpers import inference

    monkeypatch.setattr(inference, "run_cli", lambda work, debug=False: 0)   # parse only, load no model
    assert inference.main(["ask", "--", "-你好"]) == 0                          # the hinted form parses
