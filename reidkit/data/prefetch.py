"""A background thread that prepares the next training step while the current one runs.

The loaders (``TrainClipLoader``, ``iter_test_clips``) make each batch in two stages: ``prepare``
(sampling the frames, copying them out of the memory map into a slot's reused buffer, which
releases the GIL, and on CUDA starting their copy to the GPU) and ``finish`` (the batch on the
device). ``pipeline`` runs them one after the other, or, ``ahead`` > 0, wraps ``prepare`` in a
``Prefetcher``: a thread that runs it up to ``slots`` items ahead while the training loop reads
the results in order. A slot is refilled only after the consumer ``release``s it, waiting first
for the CUDA event of an asynchronous copy still reading that buffer (a blocking event: the
thread sleeps, it does not spin a core).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import torch


class Prefetcher:
    """Runs ``work(item, slot)`` for each of ``items`` on a daemon thread, at most ``slots`` ahead.

    Iterating yields ``(result, slot)`` in the order of ``items``; hand the slot back with
    ``release(slot, event)`` once its buffer is no longer read (``event``: a CUDA event the
    thread waits for before reusing the slot, or None). An exception raised by ``work`` is
    raised again by the iteration, in the consumer's thread. ``close()`` stops the thread and
    waits for it (at most one ``work`` call); the ``with`` block and ``TrainClipLoader`` call it
    however the iteration ends (exhausted, ``break``, exception), so no thread outlives it.

    ``device``: a CUDA device makes it the thread's current device before any work (a new thread
    starts on cuda:0; under DDP that would put its pinned buffers, copies and events, and a CUDA
    context, on another rank's GPU); "cuda" without an index means the creating thread's.
    """

    def __init__(self, items: Iterable, work: Callable[[Any, int], Any], slots: int = 2, device=None):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.device = torch.device(device) if device is not None else None
        if self.device is not None and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # the creator's GPU
        self._free: queue.Queue = queue.Queue()
        for slot in range(slots):
            self._free.put((slot, None))
        self._ready: queue.Queue = queue.Queue()  # at most `slots` results: bounded by the slots
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(items), work), daemon=True,
                                        name="reidkit-prefetch")
        self._thread.start()

    def _run(self, items: Iterator, work) -> None:
        try:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            for item in items:
                got = self._free.get()
                if got is None or self._stop.is_set():
                    return
                slot, event = got
                if event is not None:
                    event.synchronize()  # the last copy out of this slot's buffer has finished
                self._ready.put(("result", work(item, slot), slot))
            self._ready.put(("end", None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._ready.put(("error", e, None))

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        while True:
            kind, value, slot = self._ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value, slot

    def release(self, slot: int, event=None) -> None:
        self._free.put((slot, event))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._free.put(None)  # wakes the thread if it waits for a slot
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pipeline(items: Iterable, prepare: Callable[[Any, int], Any], finish: Callable[[Any], tuple[Any, Any]],
             ahead: int = 0, device=None, finish_ahead: bool = False) -> Iterator:
    """``finish(prepare(item, slot))[0]`` for each of ``items``, in order.

    ``prepare(item, slot)`` fills slot ``slot``'s buffer; ``finish(prepared)`` returns ``(result,
    event)``, ``event`` the CUDA event after which that buffer may be refilled (None: free now).
    ``ahead`` = 0: both here, in one slot, waiting for its last copy before refilling it.
    ``ahead`` > 0: a ``Prefetcher`` on ``device`` runs ``prepare`` that many items ahead and
    ``finish`` runs here; ``finish_ahead`` (batches made on the CPU, where ``finish`` makes new
    tensors) runs both on the thread.
    """
    if not ahead:
        event = None
        for item in items:
            if event is not None:
                event.synchronize()  # the one buffer's last copy to the GPU has finished
            result, event = finish(prepare(item, 0))
            yield result
    elif finish_ahead:
        with Prefetcher(items, lambda item, slot: finish(prepare(item, slot))[0], ahead, device=device) as thread:
            for result, slot in thread:
                thread.release(slot)  # finish made new tensors: the buffer is free
                yield result
    else:
        with Prefetcher(items, prepare, ahead, device=device) as thread:
            for prepared, slot in thread:
                result, event = finish(prepared)
                thread.release(slot, event)
                yield result
