"""Shared by the fake cluster tools in this folder: where they keep state, and the call log.

The tests put this folder first on PATH and set FAKE_CLOUD_DIR to a fresh folder. Every call
appends {"tool", "args", "time", "end"} to $FAKE_CLOUD_DIR/calls.jsonl when it ends; the
scripted life of the fake cloud is read from $FAKE_CLOUD_DIR/script.json.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from typing import Any


def state_dir() -> str:
  path = os.environ.get('FAKE_CLOUD_DIR')
  if not path:
    sys.exit('fake tool: FAKE_CLOUD_DIR is not set')
  os.makedirs(path, exist_ok=True)
  return path


def script() -> dict[str, Any]:
  path = os.path.join(state_dir(), 'script.json')
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


class Locked:
  """An exclusive lock over the fake cloud's state (several launcher threads call at once)."""

  def __enter__(self):
    self.file = open(os.path.join(state_dir(), '.lock'), 'w', encoding='utf-8')
    fcntl.flock(self.file, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    fcntl.flock(self.file, fcntl.LOCK_UN)
    self.file.close()


def log_call(tool: str, args: list[str], started: float, **extra: Any) -> None:
  with Locked(), open(os.path.join(state_dir(), 'calls.jsonl'), 'a', encoding='utf-8') as f:
    f.write(json.dumps({'tool': tool, 'args': args, 'time': started, 'end': time.time(),
                        **extra}) + '\n')


def read_json(path: str, default: Any = None) -> Any:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    return default


def write_json(path: str, value: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(value, f)
  os.replace(path + '.tmp', path)
