"""Every README example is a file in examples/ (tools/check_examples.py keeps the README equal to them):
each runs here as a user runs it, against a real `vllm serve --api-key`, and what it prints is checked."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
from vllm_tokens_patch_testbed.e2e_suite import API_KEY
from vllm_tokens_patch_testbed.serve import VllmServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(command: list[str], server: VllmServer, model: Path) -> str:
    """Run an example with the server given only through the three variables every example reads."""
    env = {**os.environ, "BASE_URL": f"{server.url}/v1", "MODEL": str(model), "VLLM_API_KEY": API_KEY}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)
    return done.stdout


def printed(stdout: str) -> dict[str, Any]:
    """`label: value` lines as a mapping (values that are JSON, e.g. id lists and counts, decoded)."""
    values: dict[str, Any] = {}
    for line in stdout.splitlines():
        label, _, value = line.partition(": ")
        try:
            values[label] = json.loads(value)
        except json.JSONDecodeError:
            values[label] = value
    return values


def assert_spliced(prompt: list[int], ids_so_far: list[int], splice: str) -> None:
    """The engine's prompt is the ids so far, verbatim, then the bridge the server added."""
    assert prompt[: len(ids_so_far)] == ids_so_far and len(prompt) > len(ids_so_far), (prompt, ids_so_far)
    assert re.fullmatch(rf"prefix={len(ids_so_far)}; bridge=\d+; close=(sampled|added)", splice), splice


def test_curl(server: VllmServer, model: Path) -> None:
    stdout = run_example(["sh", str(EXAMPLES / "curl.sh")], server, model)
    first, _, rest = stdout.partition("\nturn 2:\n")
    turn1 = json.loads(first.removeprefix("turn 1: "))
    head, _, body = rest.replace("\r\n", "\n").partition("\n\n")
    headers = dict(line.lower().split(": ", 1) for line in head.splitlines()[1:])
    turn2 = json.loads(body)
    ids_so_far = turn1["prompt_token_ids"] + turn1["choices"][0]["token_ids"]
    assert_spliced(turn2["prompt_token_ids"], ids_so_far, headers["x-vllm-tokens-splice"])
    assert headers["x-vllm-tokens-verification"] in {"match", "mismatch"}
    assert turn2["choices"][0]["token_ids"]


def test_openai_sdk(server: VllmServer, model: Path) -> None:
    out = printed(run_example([sys.executable, str(EXAMPLES / "openai_sdk.py")], server, model))
    assert_spliced(out["turn 2 prompt ids"], out["turn 1 ids"], out["x-vllm-tokens-splice"])
    assert out["turn 2 sampled ids"]
    assert out["x-vllm-tokens-verification"] in {"match", "mismatch"}, "read through the SDK"


def test_multi_turn_client(server: VllmServer, model: Path) -> None:
    stdout = run_example([sys.executable, str(EXAMPLES / "multi_turn_client.py")], server, model)
    turns = [re.fullmatch(r"turn (\d): (\[.*?\]) (\[.*?\])(?: (.*))?", line) for line in stdout.splitlines()]
    assert all(turns) and [int(t[1]) for t in turns if t] == [1, 2, 3, 4], stdout
    ids = [(json.loads(t[2]), json.loads(t[3]), t[4]) for t in turns if t]
    for (prompt, completion, _), (next_prompt, _, splice) in itertools.pairwise(ids):
        assert_spliced(next_prompt, prompt + completion, splice)


def test_verifiers_and_prime_rl_bodies(server: VllmServer, model: Path) -> None:
    out = printed(run_example([sys.executable, str(EXAMPLES / "verifiers_prime_rl.py")], server, model))
    assert out["verifiers prompt_token_ids"] == out["verifiers tokens"]
    assert out["verifiers sampled ids"] and out["verifiers finish_reason"] in {"stop", "length"}
    assert out["verifiers logprobs"] == len(out["verifiers sampled ids"])
    assert out["prime-rl prompt_logprobs"] == len(out["prime-rl scored ids"])


def test_install_from_a_clone(tmp_path: Path) -> None:
    """The README's install lines, literally, with pip in a fresh venv: the plugin and its client, no vLLM."""
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["sh", "-e", str(EXAMPLES / "install.sh")], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check = (
        "import importlib.metadata as m, importlib.util as u, vllm_tokens_patch.client;"
        "print([e.value for e in m.entry_points(group='vllm.general_plugins')], u.find_spec('vllm'))"
    )
    shown = subprocess.run([bin_dir / "python", "-c", check], capture_output=True, text=True, env=env)
    assert shown.stdout.strip() == "['vllm_tokens_patch.plugin:register'] None", shown.stdout + shown.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir()))
def test_every_example_is_run_here(name: str) -> None:
    assert f'EXAMPLES / "{name}"' in Path(__file__).read_text(), f"examples/{name} is run by no test"
