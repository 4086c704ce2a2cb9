"""Errors of the command line itself (unknown option or command, missing argument, bad value) are one
`error:` line and exit code 2, as every other bad input; --help stays typer's; --version and
`python -m edgelin`."""
import subprocess
import sys

import pytest

import edgelin
from cli_helpers import assert_user_error, run
from no_torch_helpers import run_without_torch


@pytest.mark.parametrize("args, fragments", [
    (["export", "--bogus"], ["no such option: --bogus", "edgelin export --help"]),
    (["--bogus"], ["no such option: --bogus"]),
    (["bogus"], ["no such command 'bogus'"]),
    (["generate"], ["missing argument 'package'", "edgelin generate --help"]),
    (["generate", "pkg", "--max-new-tokens", "many"], ["invalid value for '--max-new-tokens'"]),
    (["export", "--state"], ["option '--state' requires an argument"]),
], ids=["unknown-option", "unknown-top-option", "unknown-command", "missing-argument", "bad-int", "option-without-value"])
def test_usage_error_is_one_line(args, fragments):
    assert_user_error(run(*args), *fragments)


def test_help_is_unchanged():
    top, export = run("--help"), run("export", "--help")
    assert top.exit_code == 0 and export.exit_code == 0
    assert "Commands" in top.output and "generate" in top.output and "--version" in top.output
    assert "--int8" in export.output and "error:" not in export.output
    bare = run()  # no arguments: the help text, as typer prints it
    assert "Usage" in bare.output and "error:" not in bare.output


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"edgelin {edgelin.__version__}"


def test_python_m_edgelin(tmp_path):
    version = subprocess.run([sys.executable, "-m", "edgelin", "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"edgelin {edgelin.__version__}", version.stderr
    bad = subprocess.run([sys.executable, "-m", "edgelin", "export", "--bogus"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["error: no such option: --bogus (see 'python -m edgelin export --help')"]


def test_command_line_loads_without_torch():
    out = run_without_torch("from typer.testing import CliRunner\nfrom edgelin.cli import load_commands\n"
                            "print(CliRunner().invoke(load_commands(), ['--version']).output)")
    assert out.strip() == f"edgelin {edgelin.__version__}"
