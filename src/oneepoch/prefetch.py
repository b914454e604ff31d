"""Build the next step's batch on a background thread while the current step computes."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch


class Prefetcher:
    """``get(s)`` returns ``build(s)``, with ``build(s + 1)`` already started behind it.

    The batch stays a pure function of the step: the thread only computes early what the
    loop asks for next; any other step is built on the spot. On CUDA the batch is pinned, so
    the copy to the device can be asynchronous (``non_blocking``).
    """

    def __init__(
        self, build: Callable[[int], torch.Tensor], stop: int | None, device: torch.device
    ):
        self.build, self.stop = build, stop
        self.pin = device.type == "cuda"
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="oneepoch-prefetch")
        self.next: tuple[int, Future] | None = None

    def _make(self, step: int) -> torch.Tensor:
        batch = self.build(step)
        return batch.pin_memory() if self.pin else batch

    def get(self, step: int) -> torch.Tensor:
        if self.next is not None and self.next[0] == step:
            batch = self.next[1].result()
        else:
            batch = self._make(step)
        following = step + 1
        self.next = None
        if self.stop is None or following < self.stop:
            self.next = (following, self.pool.submit(self._make, following))
        return batch

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
