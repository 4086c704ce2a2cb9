"""`edgelin chat` with stdin from a pipe: a reply per line, /reset starts over, /exit ends, an unknown command is
an error line that does not end the chat; a package without a template is one error. `edgelin generate`
samples with the package's defaults."""
import json

import pytest
from typer.testing import CliRunner

from cli_helpers import app, assert_user_error, run
from edgelin.runtime.package import rewrite_package
from hf_checkpoint import chat_package

pytest.importorskip("transformers")
pytest.importorskip("jinja2")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return chat_package(tmp_path_factory)[1]


def chat(package, lines, *args):
    result = CliRunner().invoke(app, ["chat", str(package), "--max-new-tokens", "6", *args], input=lines)
    assert result.exit_code == 0, result.output
    return result


def test_a_conversation_through_a_pipe(package):
    one = chat(package, "What is the capital of France?\n").stdout
    assert one.endswith("\n") and one.strip()
    assert chat(package, "What is the capital of France?\n/reset\nWhat is the capital of France?\n").stdout == one * 2
    assert chat(package, "What is the capital of France?\n/exit\nmore\n").stdout == one
    two = chat(package, "What is the capital of France?\nAnd Italy?\n")
    assert two.stdout.startswith(one) and len(two.stdout) > len(one)
    odd = chat(package, "/nope\n\nWhat is the capital of France?\n")
    assert odd.stdout == one and odd.stderr.strip() == "error: unknown command /nope (/reset, /exit)"
    assert chat(package, "What is the capital of France?\n", "--system", "Answer briefly.").stdout != one


def test_bad_chats_are_one_error_line(package, tmp_path):
    spec = json.loads((package / "manifest.json").read_text())["tokenizer"]
    plain = rewrite_package(package, tmp_path / "plain",
                            update={"tokenizer": {k: v for k, v in spec.items() if k != "chat_template"}})
    assert_user_error(run("chat", plain), "no chat template")
    assert_user_error(run("chat", package, "--template", "tool_use"), "no chat template named 'tool_use'")
    assert_user_error(run("chat", package, "--top-p", "2"), "top_p")
    assert_user_error(run("chat", package, "--max-new-tokens", "-1"), "max-new-tokens")


def test_generate_samples_with_the_package_defaults(package):
    """The package's generation_config: do_sample, temperature 0.7, top_p 0.9 (top_k: transformers' 50)."""
    plain = run("generate", package, "--ids", "5,6,7", "--seed", "3", "--max-new-tokens", "12")
    explicit = run("generate", package, "--ids", "5,6,7", "--seed", "3", "--max-new-tokens", "12",
                   "--temperature", "0.7", "--top-k", "50", "--top-p", "0.9")
    assert plain.exit_code == 0 and plain.stdout == explicit.stdout
