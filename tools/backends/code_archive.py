"""A .tar.gz of this checkout (tracked and new, not ignored files), to ship to remote machines.

What the archive holds is what the working tree holds now, uncommitted edits included, so a
sweep runs the code that was launched; the remote side installs it from its own setup.cfg.
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


def source_files(repo: str) -> list[str]:
  """Paths (relative to `repo`) of the files to ship: git's view when it is a git checkout."""
  try:
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                            cwd=repo, capture_output=True, check=True).stdout.decode()
    files = [path for path in listed.split('\0') if path]
  except (OSError, subprocess.CalledProcessError):
    files = []
    for directory, subdirs, names in os.walk(repo):
      subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and not d.endswith('.egg-info')
                          and not d.startswith('.'))
      files += [os.path.relpath(os.path.join(directory, name), repo) for name in sorted(names)]
  return sorted(path for path in files if os.path.isfile(os.path.join(repo, path)))


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
