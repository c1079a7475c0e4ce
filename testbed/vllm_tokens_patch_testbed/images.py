"""What the image tests share: image content parts and the placeholder runs of a list of ids."""

from __future__ import annotations

import base64
import io
from typing import Any


def image_part(width: int, height: int, seed: int = 0) -> dict[str, Any]:
    """An `image_url` content part with a PNG data URL (what the stock route accepts) of a patterned image:
    different seeds give different pixels, so different features and media hashes."""
    from PIL import Image

    picture = Image.new("RGB", (width, height))
    picture.putdata([((x * 7 + seed * 50) % 256, (y * 5) % 256, (x * y + seed) % 256)
                     for y in range(height) for x in range(width)])  # fmt: skip
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def runs(ids: list[int], pad: int) -> list[tuple[int, int]]:
    """`(offset, length)` of each run of `pad` in `ids`."""
    found, start = [], None
    for index, token in enumerate([*ids, -1]):
        if token == pad and start is None:
            start = index
        elif token != pad and start is not None:
            found.append((start, index - start))
            start = None
    return found
