"""tools/refresh_matrix.py's row building on a synthetic matrix (no network)."""

from __future__ import annotations

import yaml

from tools import matrix_file, refresh_matrix
from vllm_tokens_patch import compat

MATRIX = """\
# A synthetic matrix.
#   adapter  module in vllm_tokens_patch/adapters/

ci:
  vllm: ["0.12.0", "0.26.0", "0.32.0", "0.33.0"]
  e2e: "0.32.0"

pins:
  "<0.13": {"requirements": ["transformers<5"], "why": "a reason"}

releases:
  - version: "0.12.0"
    adapter: "preprocess_chat_v0_10"
    python: "3.11"
    cpu_torch: "2.9.1"
    cpu_wheel: true
  - version: "0.26.0"
    adapter: "render_chat_request_v0_16"
    python: "3.12"
    cpu_torch: "2.11.0"
    cpu_wheel: true
  - version: "0.32.0"
    adapter: "render_chat_request_v0_27"
    python: "3.12"
    cpu_torch: "2.13.0"
    cpu_wheel: true
  - version: "0.33.0"
    adapter: "render_chat_request_v0_27"
    python: "3.12"
    cpu_torch: null
    cpu_wheel: false
"""


def data() -> dict:
    return yaml.safe_load(MATRIX)


def test_the_synthetic_matrix_is_canonical() -> None:
    assert matrix_file.dump(data(), matrix_file.header(MATRIX)) == MATRIX


def test_newer_releases_are_final_and_oldest_first() -> None:
    available = ["0.35.0", "0.34.1rc1", "0.34.0", "0.34.0.post1", "0.33.0", "0.32.0", "0.10.1.1"]
    assert refresh_matrix.newer_releases(data(), available) == ["0.34.0", "0.35.0"]
    assert refresh_matrix.newer_releases(data(), ["0.33.0", "0.32.0"]) == []


def test_adapters_are_tried_newest_first() -> None:
    assert refresh_matrix.adapters_newest_first(data()) == [
        "render_chat_request_v0_27",
        "render_chat_request_v0_16",
        "preprocess_chat_v0_10",
    ]


def test_a_row_takes_the_newest_python() -> None:
    row = refresh_matrix.build_row(data(), "0.34.0", "render_chat_request_v0_27", (True, "2.14.0"))
    assert row == {
        "version": "0.34.0",
        "adapter": "render_chat_request_v0_27",
        "python": "3.12",
        "cpu_torch": "2.14.0",
        "cpu_wheel": True,
    }
    row = refresh_matrix.build_row(data(), "0.34.0", "render_chat_request_v0_16", (False, None))
    assert row["cpu_wheel"] is False and row["cpu_torch"] is None
    assert "status" not in row and "fast_path" not in row


def test_refresh_appends_rows_in_the_canonical_layout() -> None:
    rows = [
        refresh_matrix.build_row(data(), "0.35.0", "render_chat_request_v0_27", (False, None)),
        refresh_matrix.build_row(data(), "0.34.0", "render_chat_request_v0_27", (True, "2.14.0")),
    ]
    text = refresh_matrix.refresh_text(MATRIX, rows)
    assert text.startswith(MATRIX.split("\nci:")[0])  # the header comments are kept
    assert text.split("\nreleases:")[1].startswith(MATRIX.split("\nreleases:")[1])  # old rows untouched
    assert text.endswith(
        '  - version: "0.34.0"\n'
        '    adapter: "render_chat_request_v0_27"\n'
        '    python: "3.12"\n'
        '    cpu_torch: "2.14.0"\n'
        "    cpu_wheel: true\n"
        '  - version: "0.35.0"\n'
        '    adapter: "render_chat_request_v0_27"\n'
        '    python: "3.12"\n'
        "    cpu_torch: null\n"
        "    cpu_wheel: false\n"
    )
    assert matrix_file.dump(yaml.safe_load(text), matrix_file.header(text)) == text  # stays canonical
    matrix = compat.parse_matrix(text)
    new = matrix.release("0.35.0")
    assert new is not None and new.status == {} and new.adapter == "render_chat_request_v0_27"
    assert (
        '\npins:\n  "<0.13": {"requirements": ["transformers<5"], "why": "a reason"}\n\nreleases:\n' in text
    )  # the range table is kept
    assert (new.pins, matrix.release("0.12.0").pins) == ((), ("transformers<5",))  # type: ignore[union-attr]
    assert matrix.newest_supported.version == "0.35.0"
    # The new newest release replaces the old newest in the CI set (0.32.0 still represents the adapter).
    assert matrix.ci_versions == ("0.12.0", "0.26.0", "0.32.0", "0.35.0")
    assert compat.choose("0.35.0", matrix).tested


def test_the_old_newest_stays_in_ci_when_it_is_its_adapters_only_one() -> None:
    text = MATRIX.replace('vllm: ["0.12.0", "0.26.0", "0.32.0", "0.33.0"]', 'vllm: ["0.12.0", "0.26.0"]')
    rows = [refresh_matrix.build_row(data(), "0.34.0", "render_chat_request_v0_27", (False, None))]
    matrix = compat.parse_matrix(refresh_matrix.refresh_text(text, rows))
    assert matrix.ci_versions == ("0.12.0", "0.26.0", "0.34.0")


def test_nothing_newer_changes_nothing() -> None:
    assert refresh_matrix.refresh_text(MATRIX, []) == MATRIX
