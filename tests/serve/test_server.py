"""`edgelin serve` driven by the official openai client, and a bounded load test on the loopback address."""
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgelin.runtime import ByteTokenizer, SamplingConfig, Session, encode_prompt, generate
from edgelin.serve import EngineConfig
from edgelin.serve.chat import Message, encode_chat
from serve_helpers import MODEL, running_server, wait_idle

openai = pytest.importorskip("openai")
ROOT = Path(__file__).resolve().parents[2]
TOK = ByteTokenizer()


def greedy_text(session, ids, n):
    return TOK.decode(list(generate(session, ids, n, SamplingConfig(temperature=0.0))))


def first_line(stream, seconds=60):
    lines = queue.SimpleQueue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=seconds)


def test_openai_client_drives_edgelin_serve(trained_pkg):
    proc = subprocess.Popen([sys.executable, "-m", "edgelin", "serve", str(trained_pkg), "--port", "0", "--threads", "1",
                             "--model-name", "gla-1m", "--max-tokens", "64"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = first_line(proc.stdout)
        url = re.search(r"http://[\d.]+:\d+", line).group(0)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["gla-1m"]
        session = Session(trained_pkg, threads=1)

        want = greedy_text(session, encode_prompt(TOK, "ROMEO:\n"), 24)
        r = client.completions.create(model="gla-1m", prompt="ROMEO:\n", max_tokens=24, temperature=0)
        assert r.choices[0].text == want and r.choices[0].finish_reason == "length"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (7, 24)
        chunks = client.completions.create(model="gla-1m", prompt="ROMEO:\n", max_tokens=24, temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in chunks) == want

        messages = [{"role": "system", "content": "Speak as Juliet."}, {"role": "user", "content": "Where art thou?"}]
        ids, _ = encode_chat(TOK, [Message(**m) for m in messages])
        want = greedy_text(session, ids, 30)
        r = client.chat.completions.create(model="gla-1m", messages=messages, max_tokens=30, temperature=0)
        assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
        stream = client.chat.completions.create(model="gla-1m", messages=messages, max_tokens=30, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        parts, usage = [], None
        for chunk in stream:
            parts += [c.delta.content or "" for c in chunk.choices]
            usage = chunk.usage or usage
        assert "".join(parts) == want and usage.completion_tokens == 30
        assert usage.prompt_tokens_details.cached_tokens == len(ids)  # the same conversation again

        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.completions.create(model="gpt-4", prompt="hi")
        with pytest.raises(openai.BadRequestError, match="at most 64 tokens"):
            client.completions.create(model="gla-1m", prompt="hi", max_tokens=10 ** 7)
        assert client.completions.create(model="gla-1m", prompt="hi", max_tokens=3).usage.completion_tokens == 3
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_8_clients_x_20_requests_lose_nothing_and_leave_nothing(pkg):
    session = Session(pkg, threads=1)
    prompts = ["To be, or not to be", "Now is the winter", "Friends, Romans", "O Romeo",
               "The quality of mercy", "All the world's a stage", "Once more unto the breach", "Is this a dagger"]
    lengths = [6 + i for i in range(len(prompts))]
    want_completion = {p: greedy_text(session, encode_prompt(TOK, p), n) for p, n in zip(prompts, lengths)}
    want_chat = {p: greedy_text(session, encode_chat(TOK, [Message("user", p)])[0], n) for p, n in zip(prompts, lengths)}

    def client(url, i):
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        wrong = []
        for j in range(20):
            k = (i * 3 + j) % len(prompts)
            p, n, stream, chat = prompts[k], lengths[k], j % 2 == 1, j % 4 >= 2
            if chat:
                r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=n,
                                              temperature=0, stream=stream)
                text = "".join(x.choices[0].delta.content or "" for x in r if x.choices) if stream \
                    else r.choices[0].message.content
                ok = text == want_chat[p]
            else:
                r = c.completions.create(model=MODEL, prompt=p, max_tokens=n, temperature=0, stream=stream)
                text = "".join(x.choices[0].text for x in r) if stream else r.choices[0].text
                ok = text == want_completion[p]
            if not ok:
                wrong.append((i, j, p, chat, stream, text))
        return wrong

    with running_server(pkg, EngineConfig(max_batch=4, max_queue=16)) as (url, engine):
        with ThreadPoolExecutor(8) as pool:
            wrong = [w for ws in pool.map(lambda i: client(url, i), range(8)) for w in ws]
        stats = wait_idle(engine)
    assert wrong == []
    assert (stats["completed"], stats["failed"], stats["cancelled"], stats["timed_out"]) == (160, 0, 0, 0)
    assert stats["batch_rows"] == 0 and stats["queued"] == 0


def test_cli_refusals_are_one_line(pkg):
    from cli_helpers import assert_user_error, run

    assert_user_error(run("serve", "/no/such/package"), "not a model package")
    assert_user_error(run("serve", pkg, "--max-batch", "0"), "max_batch must be an integer >= 1")
    assert_user_error(run("serve", pkg, "--draft", "/no/such/draft"), "not a model package")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        assert_user_error(run("serve", pkg, "--port", taken.getsockname()[1]), "cannot listen on 127.0.0.1:",
                          "in use")
