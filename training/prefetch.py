"""Training batches read and put on the device ahead of the step, with their exact data position.

`make_feed(iterator, put, depth)` returns what the training loop consumes: `next(feed)` is
`put(host_batch)` for the iterator's next batch, and `feed.get_state()` / `feed.stats` are
the iterator's position and counts right after the last batch the loop consumed, so a
checkpoint saves the position of the consumed batch, never that of batches read ahead.

With `depth` > 0 a background thread reads batches and applies `put` (e.g. the transfer to
the device with the run's batch sharding) up to `depth` batches ahead of the loop; it
captures the iterator's state right after each batch. With `depth` 0 everything happens in
the caller's thread, as a plain iterator would. Both give the same batches in the same order.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Protocol

import numpy as np

DEFAULT_DEPTH = 2
JOIN_TIMEOUT_S = 30.0  # close() waits this long for a read in progress, then leaves the thread
_POLL_S = 0.5  # how often a waiting consumer checks that the thread is still alive

HostBatch = dict[str, np.ndarray]


class Feed(Protocol):
  """Batches for the loop, and the data position after the last one consumed."""

  stats: dict[str, Any]

  def __next__(self) -> Any:
    ...

  def get_state(self) -> dict[str, Any]:
    ...

  def close(self) -> None:
    ...


class Synchronous:
  """`put(next(iterator))` in the caller's thread; position and counts read live."""

  def __init__(self, iterator: Any, put: Callable[[HostBatch], Any]):
    self._iterator, self._put = iterator, put

  def __iter__(self) -> Synchronous:
    return self

  def __next__(self) -> Any:
    return self._put(next(self._iterator))

  @property
  def stats(self) -> dict[str, Any]:
    return getattr(self._iterator, 'stats', {})

  def get_state(self) -> dict[str, Any]:
    return self._iterator.get_state()

  def close(self) -> None:
    pass


class _Failure:
  """An exception raised in the thread, delivered in order after the batches before it."""

  def __init__(self, error: BaseException):
    self.error = error


_END = object()  # the iterator is exhausted


class Prefetcher:
  """Reads and `put`s up to `depth` batches ahead in a daemon thread (see module docstring).

  An exception of the iterator or of `put` is raised again, the same object, by the `next`
  that would have read that batch; the end of the iterator ends this one. `close()` stops
  and joins the thread, then rewinds the iterator to the position after the last consumed
  batch, so afterwards it stands where it would without prefetching.
  """

  def __init__(self, iterator: Any, put: Callable[[HostBatch], Any],
               depth: int = DEFAULT_DEPTH):
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
      raise ValueError(f'The prefetch depth must be a positive integer, got {depth!r}.')
    self._iterator, self._put = iterator, put
    self._state = iterator.get_state()  # the position after the last consumed batch
    self._stats = _copy_stats(iterator)
    self._items: queue.Queue = queue.Queue()  # bounded by the slots
    self._slots = threading.Semaphore(depth)  # batches the thread may read ahead
    self._stop = threading.Event()
    self._ended: Any = None  # _END or a _Failure once the consumer has met it
    self._failed = False
    self._thread: threading.Thread | None = threading.Thread(
        target=self._work, name='data-prefetch', daemon=True)
    self._thread.start()

  def _work(self) -> None:
    try:
      while True:
        self._slots.acquire()
        if self._stop.is_set():
          return
        try:
          host_batch = next(self._iterator)
        except StopIteration:
          self._items.put(_END)
          return
        state, stats = self._iterator.get_state(), _copy_stats(self._iterator)
        self._items.put((self._put(host_batch), state, stats))
    except BaseException as error:  # pylint: disable=broad-exception-caught
      self._failed = True
      self._items.put(_Failure(error))

  def __iter__(self) -> Prefetcher:
    return self

  def __next__(self) -> Any:
    if self._ended is _END:
      raise StopIteration
    if self._ended is not None:
      raise self._ended.error
    if self._thread is None:
      raise RuntimeError('The data prefetcher is closed.')
    item = self._take()
    if item is _END or isinstance(item, _Failure):
      self._ended = item
      return self.__next__()
    batch, self._state, self._stats = item
    self._slots.release()
    return batch

  def _take(self) -> Any:
    while True:
      try:
        return self._items.get(timeout=_POLL_S)
      except queue.Empty:
        if not self._thread.is_alive() and self._items.empty():
          raise RuntimeError('The data prefetch thread stopped without a batch or an error.'
                             ) from None

  @property
  def stats(self) -> dict[str, Any]:
    return self._stats

  def get_state(self) -> dict[str, Any]:
    return self._state

  @property
  def thread(self) -> threading.Thread | None:
    """The reading thread; None once closed."""
    return self._thread

  def close(self) -> None:
    """Stops and joins the thread, drops the batches read ahead and rewinds the iterator;
    safe to call twice."""
    thread, self._thread = self._thread, None
    if thread is None:
      return
    self._stop.set()
    self._slots.release()  # wakes a thread waiting for room
    thread.join(JOIN_TIMEOUT_S)
    while not self._items.empty():
      self._items.get_nowait()
    if thread.is_alive():  # still inside a read: the iterator is not ours to rewind
      logging.warning('The data prefetch thread is still reading after %.0f s; left behind.',
                      JOIN_TIMEOUT_S)
      return
    if not self._failed:
      self._iterator.set_state(self._state)


def _copy_stats(iterator: Any) -> dict[str, Any]:
  return dict(getattr(iterator, 'stats', {}))


def make_feed(iterator: Any, put: Callable[[HostBatch], Any], depth: int = DEFAULT_DEPTH
              ) -> Synchronous | Prefetcher:
  """A `Prefetcher` `depth` batches ahead, or with `depth` 0 a `Synchronous` feed."""
  if depth == 0:
    return Synchronous(iterator, put)
  return Prefetcher(iterator, put, depth)
