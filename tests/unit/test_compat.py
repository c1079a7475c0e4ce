from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from vllm_tokens_patch import compat

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_matrix_and_results_are_the_repo_files() -> None:
    assert compat._matrix_text() == (ROOT / "compat_matrix.yaml").read_text(encoding="utf-8")
    assert compat._results_text() == (ROOT / "compat_results.yaml").read_text(encoding="utf-8")


def test_the_status_of_a_row_comes_from_the_results() -> None:
    results = yaml.safe_load((ROOT / "compat_results.yaml").read_text(encoding="utf-8"))
    matrix = compat.load_matrix()
    assert {r.version: r.status for r in matrix.releases if r.status} == results
    assert compat.parse_matrix(compat._matrix_text()).releases[0].status == {}


def test_matrix_lists_final_releases_once_oldest_first() -> None:
    """Which releases exist is PyPI's fact (`nox -s refresh-matrix` reads it); the file's own rules are
    these: each row a final release in canonical form, listed once, in version order."""
    versions = [r.version for r in compat.load_matrix().releases]
    parsed = [Version(v) for v in versions]
    assert [str(p) for p in parsed] == versions
    assert not [p for p in parsed if p.is_prerelease or p.is_devrelease or p.local]
    assert parsed == sorted(set(parsed))


def test_ci_set_has_every_adapter_and_the_oldest_and_newest_release() -> None:
    matrix = compat.load_matrix()
    ci = [matrix.release(version) for version in matrix.ci_versions]
    assert all(release is not None and release.supported for release in ci), matrix.ci_versions
    assert {r.adapter for r in matrix.supported} <= {r.adapter for r in ci if r is not None}
    by_age = sorted(matrix.supported, key=lambda r: compat.parse_version(r.version))
    assert {by_age[0].version, by_age[-1].version} <= set(matrix.ci_versions)


@pytest.mark.parametrize(
    ("version", "adapter", "tested"),
    [
        ("0.33.0", "render_chat_request_v0_27", True),
        ("0.15.1", "render_chat_request_v0_15", True),
        ("0.32.0+cpu", "render_chat_request_v0_27", False),  # a local build: not what was tested
        ("0.33.0rc1", "render_chat_request_v0_27", False),
        ("0.15.1.dev3", "render_chat_request_v0_15", False),
        ("99.0.0", "render_chat_request_v0_27", False),  # newer than any row: the newest adapter
        ("0.20.3.dev12+g1234", "render_chat_request_v0_17_1", False),
        ("0.14.1", "preprocess_chat_v0_13", True),
        ("0.10.2", "preprocess_chat_v0_10", True),
        ("0.10.1", None, False),
        ("0.9.2", None, False),
    ],
)
def test_choose(version: str, adapter: str | None, tested: bool) -> None:
    choice = compat.choose(version)
    assert (choice.adapter, choice.tested) == (adapter, tested)
    assert version in choice.reason


def test_parse_version_orders_rc_dev_and_local_builds() -> None:
    versions = ["0.34.0", "0.34.0rc1", "0.33.0+cpu", "0.33.0", "0.34.0.dev3", "0.10.2", "not-a-version"]
    ordered = sorted(versions, key=compat.parse_version)
    assert ordered == [
        "not-a-version",
        "0.10.2",
        "0.33.0",
        "0.33.0+cpu",
        "0.34.0.dev3",
        "0.34.0rc1",
        "0.34.0",
    ]
    assert max(["0.9.0", "0.10.0"], key=compat.parse_version) == "0.10.0"  # not string order


def test_a_pre_release_of_the_newest_row_is_not_newer_than_the_matrix() -> None:
    major, minor, patch = compat.parse_version(compat.load_matrix().newest_supported.version).release[:3]
    choice = compat.choose(f"{major}.{minor}.{patch + 1}rc1")
    assert (choice.adapter, choice.tested) == ("render_chat_request_v0_27", False)
    assert "newer than the compatibility matrix" in choice.reason


def test_pins_apply_by_range_also_to_unlisted_versions() -> None:
    text = 'ci: {}\npins:\n  "<0.12.0": {"requirements": ["transformers<5"], "why": "w"}\n'
    text += '  ">=0.11.1,<0.14": ["a<2", "transformers<5"]\nreleases:\n'
    text += "".join(f'  - {{version: "{v}", adapter: x}}\n' for v in ["0.11.0", "0.11.2", "0.13.0", "0.14.1"])
    matrix = compat.parse_matrix(text)
    assert matrix.release("0.11.0").pins == ("transformers<5",)  # type: ignore[union-attr]
    assert matrix.release("0.11.2").pins == ("transformers<5", "a<2")  # type: ignore[union-attr]
    assert matrix.release("0.13.0").pins == ("a<2", "transformers<5")  # type: ignore[union-attr]
    assert matrix.release("0.14.1").pins == ()  # type: ignore[union-attr]
    assert matrix.pins_for("0.11.3rc1") == ("transformers<5", "a<2")
    assert matrix.pins_for("0.34.0") == ()
    with pytest.raises(ValueError, match="Invalid specifier"):
        compat.parse_matrix(text.replace('"<0.12.0"', '"before 0.12"'))


def test_overrides_apply_by_range_and_carry_their_reason() -> None:
    text = 'ci: {}\noverrides:\n  ">=0.33.0": {"requirements": ["a>=1"], "why": "w"}\n'
    text += '  ">=0.34.0": ["b==2"]\nreleases:\n  - {version: "0.32.0", adapter: x}\n'
    text += '  - {version: "0.34.0", adapter: x}\n'
    matrix = compat.parse_matrix(text)
    assert matrix.release("0.32.0").overrides == ()  # type: ignore[union-attr]
    assert matrix.release("0.34.0").overrides == ("a>=1", "b==2")  # type: ignore[union-attr]
    assert matrix.overrides_for("0.35.0rc1") == ("a>=1", "b==2")
