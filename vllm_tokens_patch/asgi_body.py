"""Reading a request's body at the ASGI level and handing it on: the stock-route dispatch and the
conversation memory read it before the route that answers does."""

from __future__ import annotations

from starlette.types import Message, Receive


async def read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message up to the end of the body (or a disconnect: then the body is None)."""
    received: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        received.append(message)
        if message.get("type") != "http.request":
            return received, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return received, b"".join(chunks)


def replaying(received: list[Message], receive: Receive) -> Receive:
    """`receive` that first gives back what was read, then listens on (for the client's disconnect)."""
    pending = list(received)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
