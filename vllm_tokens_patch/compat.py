"""The installed vLLM version -> the adapter that knows it, read from `compat_matrix.yaml`.

The matrix is the single source of truth: this module, the nox sessions and the README table all read
it. The last recorded test results are generated into `compat_results.yaml` (`nox -s record`), kept out
of the hand-kept matrix. The wheel carries a copy of both inside the package; a source checkout falls
back to the repo-root files.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

MATRIX_FILE = "compat_matrix.yaml"
RESULTS_FILE = "compat_results.yaml"

_SafeLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader where PyYAML was built with it: `register()` parses the matrix in every vLLM process."""


@dataclass(frozen=True)
class Release:
    """One vLLM release as the matrix records it."""

    version: str
    adapter: str | None
    python: str
    cpu_torch: str | None = None
    cpu_wheel: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    """The last recorded results, from compat_results.yaml: <session kind>: {result, date}."""
    notes: str = ""
    pins: tuple[str, ...] = ()
    """Extra requirements the test environments need (the PyPI snapshot resolves newer, incompatible ones):
    the matrix's top-level `pins` entries whose version range holds this release."""
    overrides: tuple[str, ...] = ()
    """uv `--override` requirements the test environments need (a requirement of vLLM's own that the PyPI
    snapshot cannot satisfy): the matrix's top-level `overrides` entries whose range holds this release."""

    @property
    def supported(self) -> bool:
        return self.adapter is not None


@dataclass(frozen=True)
class Matrix:
    releases: tuple[Release, ...]
    ci_versions: tuple[str, ...]
    e2e_ci_version: str | None
    pin_ranges: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """The top-level `pins` table: (version specifier, requirements) in file order."""
    override_ranges: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """The top-level `overrides` table, likewise."""

    def release(self, version: str) -> Release | None:
        wanted = _base(version)
        for release in self.releases:
            if _base(release.version) == wanted:
                return release
        return None

    def pins_for(self, version: str) -> tuple[str, ...]:
        """The pins of every range that holds `version` (also for a release the matrix does not list)."""
        return _pins_for(self.pin_ranges, version)

    def overrides_for(self, version: str) -> tuple[str, ...]:
        """The overrides of every range that holds `version` (also for a release the matrix does not list)."""
        return _pins_for(self.override_ranges, version)

    @property
    def supported(self) -> tuple[Release, ...]:
        return tuple(r for r in self.releases if r.supported)

    @property
    def newest_supported(self) -> Release:
        return max(self.supported, key=lambda r: parse_version(r.version))


@dataclass(frozen=True)
class Choice:
    """What to do with the installed vLLM."""

    vllm_version: str
    adapter: str | None
    tested: bool
    reason: str
    """Why this adapter (or why none), for the one log line."""


def parse_version(version: str) -> Version:
    """The one version parser of the package, nox and tools: PEP 440 order (`0.34.0rc1` < `0.34.0` <
    `0.34.0+cpu`), and `0` for what does not parse, so sorting and `max` never raise."""
    try:
        return Version(version)
    except InvalidVersion:
        return Version("0")


def _base(version: str) -> Version:
    """The release a version belongs to: local labels such as `+cpu` and rc/dev suffixes dropped."""
    return Version(parse_version(version).base_version)


def _pins_for(pin_ranges: tuple[tuple[str, tuple[str, ...]], ...], version: str) -> tuple[str, ...]:
    parsed = parse_version(version)
    pins: list[str] = []
    for spec, requirements in pin_ranges:
        if SpecifierSet(spec).contains(parsed, prereleases=True):
            pins += [r for r in requirements if r not in pins]
    return tuple(pins)


def _data_text(name: str) -> str:
    packaged = importlib.resources.files("vllm_tokens_patch").joinpath(name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / name).read_text(encoding="utf-8")


def _matrix_text() -> str:
    return _data_text(MATRIX_FILE)


def _results_text() -> str:
    return _data_text(RESULTS_FILE)


def _ranges(table: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A `pins`/`overrides` table: version specifier -> requirements (or `{requirements, why}`)."""
    ranges = []
    for spec, entry in (table or {}).items():
        requirements = entry["requirements"] if isinstance(entry, dict) else entry
        SpecifierSet(str(spec))  # a malformed range fails here, not when a session installs
        ranges.append((str(spec), tuple(str(r) for r in requirements)))
    return tuple(ranges)


def parse_matrix(text: str, results: str | None = None) -> Matrix:
    """The matrix `text`, each row's `status` taken from `results` (compat_results.yaml's text)."""
    data = yaml.load(text, Loader=_SafeLoader)
    recorded = (yaml.load(results, Loader=_SafeLoader) if results else None) or {}
    pin_ranges = _ranges(data.get("pins"))
    override_ranges = _ranges(data.get("overrides"))
    releases = tuple(
        Release(
            version=str(row["version"]),
            adapter=row.get("adapter"),
            python=str(row.get("python", "3.12")),
            cpu_torch=row.get("cpu_torch"),
            cpu_wheel=bool(row.get("cpu_wheel", False)),
            status=dict(recorded.get(str(row["version"])) or {}),
            notes=str(row.get("notes", "") or ""),
            pins=_pins_for(pin_ranges, str(row["version"])),
            overrides=_pins_for(override_ranges, str(row["version"])),
        )
        for row in data["releases"]
    )
    ci = data.get("ci") or {}
    return Matrix(
        releases=releases,
        ci_versions=tuple(str(v) for v in ci.get("vllm", [])),
        e2e_ci_version=str(ci["e2e"]) if ci.get("e2e") else None,
        pin_ranges=pin_ranges,
        override_ranges=override_ranges,
    )


@lru_cache(maxsize=1)
def load_matrix() -> Matrix:
    return parse_matrix(_matrix_text(), _results_text())


def choose(vllm_version: str, matrix: Matrix | None = None) -> Choice:
    """Pick the adapter for `vllm_version`; never raises."""
    matrix = matrix or load_matrix()
    release = matrix.release(vllm_version)
    if release is not None:
        if release.adapter is None:
            return Choice(vllm_version, None, False, f"vLLM {vllm_version} is not supported: {release.notes}")
        if parse_version(vllm_version) != parse_version(release.version):
            return Choice(
                vllm_version,
                release.adapter,
                False,
                f"vLLM {vllm_version} is a pre-release, dev or local build of {release.version}, which the "
                f"compatibility matrix does not list; trying adapter {release.adapter} (untested)",
            )
        return Choice(
            vllm_version, release.adapter, True, f"vLLM {vllm_version} -> adapter {release.adapter}"
        )
    wanted = _base(vllm_version)
    newest = matrix.newest_supported
    if wanted > _base(newest.version):
        return Choice(
            vllm_version,
            newest.adapter,
            False,
            f"vLLM {vllm_version} is newer than the compatibility matrix (newest {newest.version}); "
            f"trying adapter {newest.adapter} (untested)",
        )
    below = [r for r in matrix.releases if _base(r.version) <= wanted]
    nearest = max(below, key=lambda r: parse_version(r.version)) if below else None
    if nearest is not None and nearest.adapter is not None:
        return Choice(
            vllm_version,
            nearest.adapter,
            False,
            f"vLLM {vllm_version} is not in the compatibility matrix; trying adapter {nearest.adapter} "
            f"of vLLM {nearest.version} (untested)",
        )
    oldest = min(matrix.supported, key=lambda r: parse_version(r.version))
    return Choice(
        vllm_version,
        None,
        False,
        f"vLLM {vllm_version} is not supported (supported: {oldest.version} to {newest.version})",
    )
