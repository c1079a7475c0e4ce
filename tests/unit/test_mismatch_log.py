"""The mismatch-log policy (VLLM_TOKENS_PATCH_MISMATCH_LOG): pure logic, no vLLM, no prometheus_client."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from vllm_tokens_patch import settings
from vllm_tokens_patch.mismatch_log import MismatchLog, report_mismatch
from vllm_tokens_patch.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("raw", "limit"), [(None, 10), ("", 10), ("0", 0), ("3", 3), (" 25 ", 25), ("all", None), ("ALL", None)]
)
def test_the_setting(raw: str | None, limit: int | None) -> None:
    env = {} if raw is None else {"VLLM_TOKENS_PATCH_MISMATCH_LOG": raw}
    assert Settings.from_environ(env).mismatch_log == limit


@pytest.mark.parametrize("raw", ["-1", "1.5", "none", "ten", "²"])
def test_bad_values_of_the_setting_are_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="VLLM_TOKENS_PATCH_MISMATCH_LOG"):
        Settings.from_environ({"VLLM_TOKENS_PATCH_MISMATCH_LOG": raw})


def test_the_first_n_at_warning_then_one_note_then_debug(caplog: pytest.LogCaptureFixture) -> None:
    log = MismatchLog(limit=2)
    with caplog.at_level(logging.DEBUG, logger="vllm.tokens_patch"):
        levels = [log.level() for _ in range(5)]
    assert levels == [logging.WARNING, logging.WARNING, logging.DEBUG, logging.DEBUG, logging.DEBUG]
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and caplog.records[0].levelno == logging.WARNING
    assert "VLLM_TOKENS_PATCH_MISMATCH_LOG=2" in notes[0]
    assert 'vllm_tokens_patch_verifications_total{result="mismatch"}' in notes[0] and "/metrics" in notes[0]


def test_zero_logs_none_at_warning_and_all_logs_every_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="vllm.tokens_patch"):
        silent = [MismatchLog(limit=0).level()]
        loud = MismatchLog(limit=None)
        every = [loud.level() for _ in range(50)]
    assert silent == [logging.DEBUG] and every == [logging.WARNING] * 50
    assert len(caplog.records) == 1  # the note, on the first suppressed mismatch


@pytest.fixture
def limit_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VLLM_TOKENS_PATCH_MISMATCH_LOG", "1")
    settings.current.cache_clear()
    yield
    monkeypatch.undo()
    settings.current.cache_clear()


def test_report_mismatch_follows_the_policy_of_the_process(
    limit_one: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="vllm.tokens_patch"):
        for number in range(3):
            report_mismatch(f"req-{number}", [1, 2], [1, 3], 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "req-0" in warnings[0] and "first difference at index 1" in warnings[0]
    assert "VLLM_TOKENS_PATCH_MISMATCH_LOG=1" in warnings[1]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("req-1" in m and "first difference" in m for m in debug)
    assert any("req-2" in m and "first difference" in m for m in debug)

    settings.current.cache_clear()  # the settings re-read (as after `unpatch()`): a fresh budget
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="vllm.tokens_patch"):
        report_mismatch("req-again", [1, 2], [1, 3], 1)
    assert next(r.levelno for r in caplog.records if "req-again" in r.getMessage()) == logging.WARNING
