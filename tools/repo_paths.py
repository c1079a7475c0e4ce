"""Where the checkout is, for the tools in this directory: they run from a clone (and from nox) where this
package may not be installed, so the checkout root and `tools/` are made importable here, once."""

from __future__ import annotations

import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent

for _path in (str(ROOT), str(TOOLS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
