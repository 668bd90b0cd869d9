"""A .tar.gz of this checkout's code, to ship to remote machines.

What the archive holds is what the working tree holds now, uncommitted edits included, so a
sweep runs the code that was launched; the remote side installs it from its own setup.cfg.
It holds the files git tracks plus new Python modules not yet added, never other untracked
files: a .env, a credentials.json or a key file left in the checkout stays here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from typing import Sequence

_SKIP_DIRS = {'.git', '__pycache__', 'runs', '.pytest_cache', 'build', 'dist'}
# Without git: the kinds of file this repository holds (code, packaging, docs, test fakes).
_SUFFIXES = ('.py', '.md', '.cfg', '.toml', '.sh', '.csv', '.png')


def _git_files(repo: str, *flags: str) -> list[str]:
  listed = subprocess.run(['git', 'ls-files', '-z', *flags], cwd=repo, capture_output=True,
                          check=True).stdout.decode()
  return [path for path in listed.split('\0') if path]


def _hidden(path: str) -> bool:
  return any(part.startswith('.') for part in path.split('/'))


def source_files(repo: str) -> list[str]:
  """Paths (relative to `repo`) of the files to ship: in a git checkout the tracked files and
  new, not ignored, not hidden .py files; else the not hidden files of the repository's kinds."""
  try:
    files = _git_files(repo, '--cached') + [
        path for path in _git_files(repo, '--others', '--exclude-standard')
        if path.endswith('.py') and not _hidden(path)]
  except (OSError, subprocess.CalledProcessError):
    files = []
    for directory, subdirs, names in os.walk(repo):
      subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and not d.endswith('.egg-info')
                          and not d.startswith('.'))
      files += [os.path.relpath(os.path.join(directory, name), repo) for name in sorted(names)
                if name.endswith(_SUFFIXES) and not name.startswith('.')]
  return sorted(path for path in files if os.path.isfile(os.path.join(repo, path)))


def sha256(path: str) -> str:
  """The sha256 of the file at `path`, as `build` returns it."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def total_bytes(repo: str, files: Sequence[str]) -> int:
  return sum(os.path.getsize(os.path.join(repo, path)) for path in files)


def build(repo: str, destination: str, files: Sequence[str] | None = None) -> str:
  """Writes the archive to `destination`; returns its sha256 (same files, same bytes)."""
  files = source_files(repo) if files is None else files
  buffer = io.BytesIO()
  with gzip.GzipFile(fileobj=buffer, mode='wb', mtime=0) as zipped, \
      tarfile.open(fileobj=zipped, mode='w', format=tarfile.PAX_FORMAT) as tar:
    for path in files:
      info = tar.gettarinfo(os.path.join(repo, path), arcname=path)
      info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, '', ''
      with open(os.path.join(repo, path), 'rb') as f:
        tar.addfile(info, f)
  data = buffer.getvalue()
  with open(destination, 'wb') as f:
    f.write(data)
  return hashlib.sha256(data).hexdigest()
