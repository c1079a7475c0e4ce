"""Every example of the README and docs/ is a file in examples/ (tools/check_examples.py keeps the pages
equal to them): each runs here as a user runs it, against a real `vllm serve --api-key`, and what it prints
is checked. The Python examples run in a fresh venv made by the README's own install lines
(examples/install.sh), so those lines are proven to name everything the examples import. The CPU path,
examples/cpu_quickstart.sh, makes its own venv and server: `nox -s quickstart` runs it."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
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


def test_openai_sdk(server: VllmServer, model: Path, installed: Path) -> None:
    out = printed(run_example([str(installed), str(EXAMPLES / "openai_sdk.py")], server, model))
    assert_spliced(out["turn 2 prompt ids"], out["turn 1 ids"], out["x-vllm-tokens-splice"])
    assert out["turn 2 sampled ids"]
    assert out["x-vllm-tokens-verification"] in {"match", "mismatch"}, "read through the SDK"


def test_multi_turn_client(server: VllmServer, model: Path, installed: Path) -> None:
    stdout = run_example([str(installed), str(EXAMPLES / "multi_turn_client.py")], server, model)
    turns = [re.fullmatch(r"turn (\d): (\[.*?\]) (\[.*?\])(?: (.*))?", line) for line in stdout.splitlines()]
    assert all(turns) and [int(t[1]) for t in turns if t] == [1, 2, 3, 4], stdout
    ids = [(json.loads(t[2]), json.loads(t[3]), t[4]) for t in turns if t]
    for (prompt, completion, _), (next_prompt, _, splice) in itertools.pairwise(ids):
        assert_spliced(next_prompt, prompt + completion, splice)


def test_verifiers_and_prime_rl_bodies(server: VllmServer, model: Path, installed: Path) -> None:
    out = printed(run_example([str(installed), str(EXAMPLES / "verifiers_prime_rl.py")], server, model))
    assert out["verifiers prompt_token_ids"] == out["verifiers tokens"]
    assert out["verifiers sampled ids"] and out["verifiers finish_reason"] in {"stop", "length"}
    assert out["verifiers logprobs"] == len(out["verifiers sampled ids"])
    assert out["prime-rl prompt_logprobs"] == len(out["prime-rl scored ids"])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no vLLM) set up by the README's install lines, literally, with pip; its python."""
    where = tmp_path_factory.mktemp("installed")
    venv.create(where / "venv", with_pip=True)
    bin_dir = where / "venv" / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["sh", "-e", str(EXAMPLES / "install.sh")], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return bin_dir / "python"


def test_install_from_a_clone(installed: Path) -> None:
    """The README's install lines give the plugin (its entry point) and the client, and no vLLM."""
    check = (
        "import importlib.metadata as m, importlib.util as u, vllm_tokens_patch.client;"
        "print([e.value for e in m.entry_points(group='vllm.general_plugins')], u.find_spec('vllm'))"
    )
    shown = subprocess.run([installed, "-c", check], capture_output=True, text=True)
    assert shown.stdout.strip() == "['vllm_tokens_patch.plugin:register'] None", shown.stdout + shown.stderr


def test_cpu_quickstart_is_run_by_its_own_session() -> None:
    """examples/cpu_quickstart.sh builds its own venv and serves on port 8000: `nox -s quickstart` (in
    `ci`) runs it literally; here only that the session exists and runs this very file."""
    noxfile = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    assert "def quickstart(" in noxfile and '"sh", "examples/cpu_quickstart.sh"' in noxfile
    assert EXAMPLES / "cpu_quickstart.sh"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir()))
def test_every_example_is_run_here(name: str) -> None:
    assert f'EXAMPLES / "{name}"' in Path(__file__).read_text(), f"examples/{name} is run by no test"
