"""Updates a run's launch.json from inside a job, where the launcher is not (sbatch scripts).

  python -m launching.mark WORKDIR running|done|requeued|failed [--exit_code N] [--log F]
"""

from __future__ import annotations

import argparse

from launching import base, record as record_lib


def mark(workdir: str, event: str, exit_code: int | None = None, log: str = '',
         detail: str = '') -> None:
  """Updates the record from inside a job (sbatch script, container), where the launcher is not.

  event: 'running' (an attempt starts), 'done', 'requeued' (this attempt ended and the job
  system starts the run again: preempted when exit_code is 143) or 'failed'.
  """
  data = record_lib.read(workdir)
  if data is None:
    return  # not launched through tools/launch.py: nothing to keep up to date
  record = record_lib.RunRecord(workdir, data)
  output = ''
  if log:
    try:
      with open(log, encoding='utf-8', errors='replace') as f:
        output = f.read()[-20000:]
    except OSError:
      output = ''
  if event == 'running':
    record.update('running', detail=detail or 'attempt started',
                  attempts=int(data.get('attempts', 0)) + 1)
  elif event == 'done':
    record.update('done', detail=detail or 'finished', reason='')
  elif event in ('requeued', 'failed'):
    outcome = base.outcome_of(exit_code if exit_code is not None else 1, output)
    preempted = outcome.state == 'preempted'
    counts = {'preemptions': int(data.get('preemptions', 0)) + preempted,
              'failures': int(data.get('failures', 0)) + (not preempted)}
    if event == 'requeued':
      record.update('preempted' if preempted else 'queued', reason=outcome.reason,
                    detail=f'{outcome.state}: {outcome.reason}; requeued', **counts)
    else:
      record.update('failed', reason=outcome.reason, detail=outcome.reason, **counts)
  else:
    raise ValueError(f'Unknown event {event!r}: running, done, requeued or failed.')


def main() -> None:
  parser = argparse.ArgumentParser(description='Updates a run\'s launch.json from inside a job.')
  parser.add_argument('workdir')
  parser.add_argument('event', choices=('running', 'done', 'requeued', 'failed'))
  parser.add_argument('--exit_code', type=int)
  parser.add_argument('--log', default='')
  parser.add_argument('--detail', default='')
  options = parser.parse_args()
  mark(options.workdir, options.event, options.exit_code, options.log, options.detail)


if __name__ == '__main__':
  main()
