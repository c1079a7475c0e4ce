from __future__ import annotations

from typing import Any

import pytest
from vllm_tokens_patch_testbed.family_templates import FAMILIES, build_tokenizer


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every family's tiny tokenizer, trained offline into a tmp dir (well under a second each)."""
    root = tmp_path_factory.mktemp("family-tokenizers")
    return {name: build_tokenizer(family, root / name) for name, family in FAMILIES.items()}
