from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from family_templates import FAMILIES, build_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every family's tiny tokenizer, trained offline into a tmp dir (well under a second each)."""
    root = tmp_path_factory.mktemp("family-tokenizers")
    return {name: build_tokenizer(family, root / name) for name, family in FAMILIES.items()}
