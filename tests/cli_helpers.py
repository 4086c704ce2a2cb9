"""Running the CLI in-process and checking the one-line error contract (shared by CLI tests)."""
from typer.testing import CliRunner

from edgelin.cli import load_commands

runner = CliRunner()
app = load_commands()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments):
    """Exit code 2 and exactly one `error:` line holding every fragment."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
