"""Files only their owner reads, folders only their owner writes, and commands without secrets.

Launch logs and job scripts hold the commands of a sweep (install steps included), so they are
written 0600 and never through a symbolic link; what is recorded for others to read (launch.json,
a log's command line) has credentials in URLs and obvious token or password values masked.
"""

from __future__ import annotations

import os
import re
import stat
from typing import IO

MASK = '***'
# https://user:token@host -> https://***@host
_URL_CREDENTIALS = re.compile(r'(?<=://)[^/\s@\'"]+@')
# GITHUB_TOKEN=abc, api_key: abc, --password abc, --token=abc
_NAMED_SECRET = re.compile(
    r'(?i)(\b[\w-]*(?:token|password|passwd|secret|api[_-]?key|access[_-]?key)'
    r'(?:=|:\s*|\s+))(?:"[^"]*"|\'[^\']*\'|[^\s\'";&|]+)')


def redact(text: str) -> str:
  """`text` with URL credentials and values of token/password/secret-named settings masked."""
  text = _URL_CREDENTIALS.sub(MASK + '@', text)
  return _NAMED_SECRET.sub(lambda m: m.group(1) + MASK, text)


def open_private(path: str, append: bool = False) -> IO[str]:
  """Opens `path` for text writing, mode 0600, refusing to follow a symbolic link there."""
  flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
  descriptor = os.open(path, flags, 0o600)
  try:
    os.fchmod(descriptor, 0o600)  # a file that existed keeps its mode otherwise
    return os.fdopen(descriptor, 'a' if append else 'w', encoding='utf-8')
  except BaseException:
    os.close(descriptor)
    raise


def write_private(path: str, text: str) -> None:
  with open_private(path) as f:
    f.write(text)


def own_folder_problem(path: str) -> str:
  """Why `path` (an existing folder) may hold files another local user swapped, or ''."""
  info = os.lstat(path)
  if stat.S_ISLNK(info.st_mode):
    return 'is a symbolic link'
  if not stat.S_ISDIR(info.st_mode):
    return 'is not a folder'
  if info.st_uid != os.geteuid():
    return f'belongs to user id {info.st_uid}, not to you'
  if info.st_mode & 0o022:
    return f'is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})'
  return ''
