"""`merge`: the choices of a request as one stream, and closing it closes every choice's stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from inference.api.generation import merge


class _Choice:
    """A stream of `count` items that records whether it was closed."""

    def __init__(self, name: str, count: int) -> None:
        self.name, self.count, self.closed = name, count, False

    async def items(self) -> AsyncIterator[str]:
        try:
            for index in range(self.count):
                await asyncio.sleep(0)
                yield f"{self.name}{index}"
        finally:
            self.closed = True


@pytest.mark.parametrize("choices", [1, 3])
def test_every_item_of_every_choice_comes_through_and_each_stream_is_closed(choices):
    streams = [_Choice(f"c{n}-", 4) for n in range(choices)]

    async def main() -> list[str]:
        return [item async for item in merge([stream.items() for stream in streams])]

    items = asyncio.run(main())
    assert sorted(items) == sorted(f"c{n}-{i}" for n in range(choices) for i in range(4))
    for stream in streams:  # items of one choice keep their order
        own = [item for item in items if item.startswith(stream.name)]
        assert own == [f"{stream.name}{i}" for i in range(4)]
    assert all(stream.closed for stream in streams)


@pytest.mark.parametrize("choices", [1, 3])
def test_closing_the_merge_early_closes_every_choice(choices):
    streams = [_Choice(f"c{n}-", 100) for n in range(choices)]

    async def main() -> list[bool]:
        merged = merge([stream.items() for stream in streams])
        await anext(merged)
        await merged.aclose()
        return [stream.closed for stream in streams]  # closed by then, not later by the event loop

    assert all(asyncio.run(main()))
