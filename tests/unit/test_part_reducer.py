"""ExactPartReducer: hivemind's part-reducer protocol (futures, sender order, banning) with a pluggable reducer,
driven directly on an asyncio loop, without a network (src/koinon/swarm/averaging.py)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from hivemind.averaging.partition import BannedException

from koinon.swarm.averaging import ExactPartReducer

SHAPES = [torch.Size([3]), torch.Size([2])]  # two parts of one vector


def run(coro):
    return asyncio.run(coro)


async def send_all(reducer: ExactPartReducer, sender: int, parts: list[torch.Tensor], weight: float):
    """What one sender's stream does: its parts in order, each awaiting the part's aggregate."""
    return [await reducer.accumulate_part(sender, i, part, weight=weight) for i, part in enumerate(parts)]


def test_every_sender_gets_the_same_median_for_every_part():
    async def scenario():
        reducer = ExactPartReducer(SHAPES, num_senders=4, reducer="median")
        inputs = [
            [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0])],
            [torch.tensor([2.0, 3.0, 4.0]), torch.tensor([2.0, 2.0])],
            [torch.tensor([3.0, 4.0, 5.0]), torch.tensor([3.0, 3.0])],
            [torch.tensor([1e6, 1e6, 1e6]), torch.tensor([-1e6, -1e6])],  # the outlier
        ]
        return await asyncio.gather(*(send_all(reducer, s, parts, 1.0) for s, parts in enumerate(inputs)))

    results = run(scenario())
    for got in results:
        # sorted (1, 2, 3, 10⁶) → (2 + 3)/2 ... ; sorted (−10⁶, 1, 2, 3) → (1 + 2)/2 = 1.5
        assert torch.equal(got[0], torch.tensor([2.5, 3.5, 4.5]))
        assert torch.equal(got[1], torch.tensor([1.5, 1.5]))
    assert all(r[0] is results[0][0] for r in results), "all senders must await the very same tensor"


def test_mean_with_weights_and_a_zero_weight_sender():
    async def scenario():
        reducer = ExactPartReducer(SHAPES[:1], num_senders=3)  # default: mean
        parts = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5.0, 6.0, 7.0]), torch.zeros(3)]
        weights = [1.0, 3.0, 0.0]
        return await asyncio.gather(*(reducer.accumulate_part(s, 0, parts[s], weight=weights[s]) for s in range(3)))

    for got in run(scenario()):
        assert torch.equal(got, torch.tensor([4.0, 5.0, 6.0]))  # (1 + 15)/4, (2 + 18)/4, (3 + 21)/4


def test_all_weights_zero_gives_zeros_not_nan():
    async def scenario():
        reducer = ExactPartReducer(SHAPES[:1], num_senders=2, reducer="centered_clip")
        return await asyncio.gather(*(reducer.accumulate_part(s, 0, torch.ones(3), weight=0.0) for s in range(2)))

    for got in run(scenario()):
        assert torch.equal(got, torch.zeros(3))


def test_a_sender_that_fails_is_not_waited_for_in_later_parts():
    async def scenario():
        reducer = ExactPartReducer(SHAPES, num_senders=3, reducer="trimmed_mean")
        first = [reducer.accumulate_part(s, 0, torch.full((3,), float(s + 1))) for s in range(3)]
        part0 = await asyncio.gather(*first)
        reducer.on_sender_failed(2)  # sender 2 dies after part 0 (hivemind's ban)
        with pytest.raises(BannedException):
            await reducer.accumulate_part(2, 1, torch.full((2,), 100.0))
        second = [reducer.accumulate_part(s, 1, torch.full((2,), float(10 * (s + 1)))) for s in range(2)]
        return part0, await asyncio.gather(*second)

    part0, part1 = run(scenario())
    # n = 3: nothing trimmed, (1 + 2 + 3)/3 = 2 ; part 1 from senders 0 and 1 only: (10 + 20)/2 = 15
    assert all(torch.equal(p, torch.full((3,), 2.0)) for p in part0)
    assert all(torch.equal(p, torch.full((2,), 15.0)) for p in part1)


def test_unknown_reducer_is_refused():
    async def scenario():  # hivemind builds its reducers inside the averager's event loop
        with pytest.raises(ValueError, match="unknown reducer 'krum'"):
            ExactPartReducer(SHAPES, num_senders=2, reducer="krum")

    run(scenario())
