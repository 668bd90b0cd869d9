"""One run per workdir: a lock file holding the owner's host and pid, with stale-lock detection.

Two runs writing one workdir interleave checkpoints and metrics; the second one must refuse
in one line instead. `workdir_lock(workdir)` creates `workdir/.lock` atomically (O_EXCL) and
removes it on exit. A lock whose process is gone (same host, pid not running, or running but
started after the lock was taken, i.e. a reused pid) is stale and taken over. A lock from
another host cannot be checked from here: the error says how to remove it if that run is dead.
Remote workdirs (gs://...) are not locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Iterator

LOCK_NAME = '.lock'


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir; the message is one line naming it and the fix."""


def _start_time(pid: int) -> float | None:
  """Seconds since the epoch at which process `pid` started (Linux /proc), or None."""
  try:
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    with open('/proc/stat', encoding='utf-8') as f:
      boot = next(float(line.split()[1]) for line in f if line.startswith('btime '))
    return boot + int(fields[19]) / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError, StopIteration):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def owner_is_running(owner: dict) -> bool | None:
  """Whether the run that wrote `owner` is still running: None when it is on another host."""
  if owner.get('host') != socket.gethostname():
    return None
  pid = int(owner.get('pid', -1))
  if pid <= 0 or not _alive(pid):
    return False
  started = _start_time(pid)
  # A pid reused by a process that started after the lock was written is not the owner.
  return not (started is not None and 'time' in owner and started > float(owner['time']) + 2.0)


def _read(path: str) -> dict | None:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # unreadable or cut off mid-write: treated as stale below


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True) -> Iterator[str | None]:
  """Holds `workdir/.lock` for the duration; raises `WorkdirLocked` if a live run holds it.

  Only one process of a multi-process run should take it (pass enabled=False elsewhere).
  Yields the lock's path (None when not locked).
  """
  if not enabled or '://' in workdir:
    yield None
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  mine = {'host': socket.gethostname(), 'pid': os.getpid(), 'time': time.time()}
  for _ in range(5):
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      owner = _read(path)
      if owner is None:
        continue  # released meanwhile
      running = owner_is_running(owner) if owner else False
      if running is None:
        raise WorkdirLocked(
            f'{workdir} is in use by a run on host {owner.get("host")} (pid {owner.get("pid")}): '
            f'wait for it, use another --workdir, or delete {path} if that run is dead.') from None
      if running:
        raise WorkdirLocked(
            f'{workdir} is in use by another run (pid {owner.get("pid")} on this host): wait for '
            'it or use another --workdir.') from None
      # Stale: move it aside atomically (only one taker succeeds), then try again. If what was
      # moved is not the stale lock read above, another taker's fresh lock: put it back.
      aside = f'{path}.stale.{os.getpid()}'
      with contextlib.suppress(FileNotFoundError):
        os.rename(path, aside)
        if _read(aside) != owner:
          with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        os.remove(aside)
      continue
    try:
      with os.fdopen(fd, 'w', encoding='utf-8') as f:
        json.dump(mine, f)
    except OSError:  # e.g. a full disk: leave no empty lock behind
      with contextlib.suppress(OSError):
        os.remove(path)
      raise
    break
  else:
    raise WorkdirLocked(f'Could not take {path}: other runs keep taking it; use another --workdir.')
  try:
    yield path
  finally:
    if _read(path) == mine:  # never remove a lock another run took over
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
