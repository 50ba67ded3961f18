"""One all-reduce of pseudo-gradients per attempt, over hivemind (``ExactAverager``), scheduled from DHT hints.

The DHT announcements (``announce.py``: signed, but claims all the same) only steer *when* the all-reduce starts
and how large a group to aim for: peers training toward the same height, and those finishing the height before
it, are waited for, up to ``rounds.all_reduce_time``'s grace. *Who counts* and *whether the result may become θ*
are decided from the group's signed gathers (``rounds.decide_group``), never from these hints.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from koinon.swarm.averaging import by_member
from koinon.swarm.compression import get_compression, roundtrip
from koinon.swarm.rounds import all_reduce_time

logger = logging.getLogger("koinon.peer")


class Exchange:
    def __init__(self, averager, announcer, member: str, matchmaking_time: float, averaging_timeout: float) -> None:
        self.averager, self.announcer, self.member = averager, announcer, member
        self.matchmaking_time, self.averaging_timeout = matchmaking_time, averaging_timeout
        self.last_group: list[str] = [member]

    def live_peers(self) -> dict[str, dict]:
        return self.announcer.live_peers()

    def run(
        self,
        height: int,
        contribution: torch.Tensor,
        weight: int,
        gather: dict,
        round_s: float,
        stop: threading.Event,
        passed: Callable[[], bool] = lambda: False,
    ) -> dict[str, object] | None:
        """Average ``contribution`` (weight ``weight``) with the peers working toward ``height``; the group's
        gathered metadata by member (ours included), or None when no group formed. The average is left in the
        averager's buffer. ``passed()`` (asked about once a second) says the swarm already certified ``height``
        without us: then we stop waiting for a group and go sync instead."""
        from hivemind.utils import get_dht_time

        companions = [m for m in self.last_group if m != self.member]
        for _ in range(3):
            others = {m: v for m, v in self.live_peers().items() if m != self.member}
            same = [v for v in others.values() if v.get("height") == height]
            # peers still finishing the height before will be here soon: wait for them too
            behind = [v for v in others.values() if v.get("height") == height - 1]
            if same or behind or not companions:
                break
            time.sleep(0.5)  # last group nowhere to be seen: a DHT lookup can fail under load, look again
        else:
            behind = [{"member": m} for m in companions]  # expect them anyway; matchmaking fails if they left
        if not same and not behind:
            # alone: the "average" is our own contribution as it would come back from the wire
            with self.averager.get_tensors() as (buffer,):
                buffer.copy_(roundtrip(contribution, get_compression(str(gather["compression"]))))
            self.last_group = [self.member]
            return {self.member: gather}
        with self.averager.get_tensors() as (buffer,):
            buffer.copy_(contribution)
        self.averager.configure_matchmaking(min_group_size=2, target_group_size=len(same) + len(behind) + 1)
        now = get_dht_time()
        etas = [float(v["eta"]) for v in same if isinstance(v.get("eta"), (int, float))]
        if behind:
            etas.append(now + round_s + 1.0)
        scheduled = all_reduce_time(now, etas, round_s, cap=self.averaging_timeout) + 0.25
        logger.debug(
            "height %d: %d with us, %d behind; all-reduce in %.2f s", height, len(same), len(behind), scheduled - now
        )
        try:
            control = self.averager.step(
                gather=gather,
                weight=float(weight),
                scheduled_time=scheduled,
                timeout=scheduled - now + self.matchmaking_time + self.averaging_timeout,
                wait=False,
            )
            ticks = 0
            while not control.done():
                ticks += 1
                if stop.wait(0.1) or (ticks % 10 == 0 and not control.began_allreduce and passed()):
                    control.cancel()
                    return None
            result = control.result()
        except Exception as e:
            logger.info("height %d: averaging failed: %r", height, e)
            return None
        gathered = by_member(result or {})
        if self.member not in gathered:
            return None
        self.last_group = sorted(gathered)
        return gathered
