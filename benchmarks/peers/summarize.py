"""Builds the GPU suite's results (JSON lines) and markdown summary from its row logs.

  python benchmarks/peers/summarize.py --status WORK/status.tsv --jsonl OUT/results.jsonl \\
      --markdown OUT/summary.md

`status.tsv` (written by benchmarks/gpu_suite.sh) has one line per row and side:
row, side (ours, peer or host), state (ok, failed, timeout, skipped), exit code, wall seconds,
log path and a note. A row's result is the last line of its log that is a JSON object with
tokens_per_sec. Standard library only, so it runs whether or not torch is installed.
"""

from __future__ import annotations

import argparse
import json
import os

ROWS = {  # row -> label
    'clm': 'CLM (GPT-2 small)',
    'mlm': 'MLM (BERT-base)',
    'mlm_nsp': 'MLM+NSP (BERT-base)',
    'plm': 'PLM (XLNet-base size, K=6)',
}


def read_status(path: str) -> list[dict]:
  """The status lines as dicts (fields as in the module docstring)."""
  entries = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      parts = line.rstrip('\n').split('\t')
      if len(parts) < 6:
        continue
      row, side, state, rc, wall, log = parts[:6]
      entries.append({'row': row, 'side': side, 'state': state, 'rc': rc,
                      'wall_s': float(wall or 0), 'log': log,
                      'note': parts[6] if len(parts) > 6 else ''})
  return entries


def json_lines(log: str) -> list[dict]:
  """Every line of `log` that parses as a JSON object."""
  out = []
  if not log or not os.path.exists(log):
    return out
  with open(log, encoding='utf-8', errors='replace') as f:
    for line in f:
      line = line.strip()
      if line.startswith('{') and line.endswith('}'):
        try:
          value = json.loads(line)
        except ValueError:
          continue
        if isinstance(value, dict):
          out.append(value)
  return out


def last_line(log: str) -> str:
  """The log's last non-empty line (why a row failed), shortened."""
  if not log or not os.path.exists(log):
    return ''
  with open(log, encoding='utf-8', errors='replace') as f:
    lines = [line.strip() for line in f if line.strip()]
  return lines[-1][:200] if lines else ''


def collect(entries: list[dict]) -> list[dict]:
  """One record per status entry: its JSON result (if any) plus row, side, state, wall time."""
  records = []
  for entry in entries:
    found = [r for r in json_lines(entry['log']) if 'tokens_per_sec' in r]
    record = dict(found[-1]) if found and entry['side'] != 'host' else {}
    record.update(row=entry['row'], side=entry['side'], state=entry['state'],
                  rc=entry['rc'], wall_s=entry['wall_s'])
    if entry['note']:
      record['note'] = entry['note']
    if entry['state'] == 'ok' and entry['side'] != 'host' and not found:
      record['state'] = 'no result'
    if record['state'] != 'ok':
      record['last_line'] = last_line(entry['log'])
    if entry['side'] == 'host':
      record['host_pipeline'] = [r for r in json_lines(entry['log'])
                                 if 'format' in r and 'tokens_per_sec' in r]
    records.append(record)
  return records


def _num(value, digits: int = 1, scale: float = 1.0) -> str:
  if value is None:
    return '-'
  return f'{value / scale:,.{digits}f}'


def _tokens(value) -> str:
  if value is None:
    return '-'
  if value < 1e4:
    return f'{value:,.0f}'
  return f'{value / 1e3:,.0f}k' if value < 1e6 else f'{value / 1e6:,.2f}M'


def shape(ours: dict | None, peer: dict | None) -> str:
  """'12x768, vocab 50304, 32 x 1024' from the measured records (both when they differ)."""
  shapes = []
  for record in (ours, peer):
    if record and record.get('batch'):
      text = (f'{record.get("layers", "?")}x{record.get("width", "?")}, vocab '
              f'{record.get("vocab", "?")}, {record["batch"]} x {record["seq"]}')
      if text not in shapes:
        shapes.append(text)
  return ' / '.join(shapes) or '-'


def _cell(record: dict | None, key: str, fmt) -> str:
  if record is None:
    return '-'
  if record.get('state') != 'ok':
    return record.get('state', '-')
  return fmt(record.get(key))


def markdown(records: list[dict]) -> str:
  """The summary table (ours against the peer per row), failures and the host pipeline."""
  by_key = {(r['row'], r['side']): r for r in records}
  lines = ['| row | layers x width, vocab, batch x seq | ours tokens/s | ours step ms | '
           'ours compile s | ours peak GiB | ours TFLOP/s | ours MFU | peer | peer tokens/s | '
           'peer step ms | peer compile s | peer peak GiB | ours / peer |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for row, label in ROWS.items():
    ours, peer = by_key.get((row, 'ours')), by_key.get((row, 'peer'))
    if ours is None and peer is None:
      continue
    ratio = '-'
    if (ours and peer and ours.get('state') == 'ok' and peer.get('state') == 'ok'
        and peer.get('tokens_per_sec')):
      ratio = f'{ours["tokens_per_sec"] / peer["tokens_per_sec"]:.2f}x'
    peer_name = '-'
    if peer is not None and peer.get('model'):
      peer_name = peer['model'] + ('' if peer.get('compiled', True) else ' (eager)')
    lines.append('| ' + ' | '.join([
        label, shape(ours, peer),
        _cell(ours, 'tokens_per_sec', _tokens), _cell(ours, 'step_time_ms', _num),
        _cell(ours, 'compile_s', _num), _cell(ours, 'peak_memory_gib', _num),
        _cell(ours, 'tflops_per_sec', _num),
        _cell(ours, 'mfu', lambda v: '-' if v is None else f'{100 * v:.1f}%'),
        peer_name,
        _cell(peer, 'tokens_per_sec', _tokens), _cell(peer, 'step_time_ms', _num),
        _cell(peer, 'compile_s', _num), _cell(peer, 'peak_memory_gib', _num), ratio]) + ' |')
  shown = [r for r in records if r['side'] in ('ours', 'peer')]
  devices = sorted({r['device'] for r in shown if r.get('device')})
  if devices:
    lines += ['', f'Device: {", ".join(devices)}.']
  for side in ('ours', 'peer'):
    versions = next((r['versions'] for r in shown if r['side'] == side and r.get('versions')),
                    None)
    if versions:
      lines.append(f'{side}: ' + ', '.join(f'{k} {v}' for k, v in versions.items()) + '.')
  steps = sorted({(r['side'], r.get('steps')) for r in shown if r.get('state') == 'ok'})
  if steps:
    lines.append('Timed steps: ' + ', '.join(f'{side} {n}' for side, n in steps) + '.')
  noted = [r for r in records if r['state'] == 'ok' and r.get('note')]
  if noted:
    lines += ['', 'Notes:'] + [f'- {r["row"]} {r["side"]}: {r["note"]}' for r in noted]
  problems = [r for r in records if r['state'] != 'ok']
  if problems:
    lines += ['', 'Not measured:']
    for r in problems:
      why = r.get('note') or r.get('last_line') or ''
      lines.append(f'- {r["row"]} {r["side"]}: {r["state"]} (exit {r["rc"]}, '
                   f'{r["wall_s"]:.0f} s){": " + why if why else ""}')
  for r in records:
    if r['side'] == 'host' and r.get('host_pipeline'):
      lines += ['', 'Host pipeline, one core (tokens/s, all positions), against what our row of '
                'that format and length consumed on the device (3x or more keeps up):', '',
                '| format | seq | path | tokens/s | real tokens/s | device consumed | host / device |',
                '|---|---|---|---|---|---|---|']
      for h in r['host_pipeline']:
        ratio = h.get('host_to_device')
        lines.append(f'| {h["format"]} | {h.get("seq_len", "-")} | {h.get("path", "-")} | '
                     f'{_tokens(h["tokens_per_sec"])} | '
                     f'{_tokens(h.get("real_tokens_per_sec"))} | '
                     f'{_tokens(h.get("device_tokens_per_sec"))} | '
                     f'{"-" if ratio is None else f"{ratio:.1f}x"} |')
  return '\n'.join(lines) + '\n'


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--status', required=True, help='status.tsv written by gpu_suite.sh.')
  p.add_argument('--jsonl', help='Write one JSON line per row and side here.')
  p.add_argument('--markdown', help='Write the summary here (it is printed either way).')
  args = p.parse_args()
  records = collect(read_status(args.status))
  if args.jsonl:
    with open(args.jsonl, 'w', encoding='utf-8') as f:
      for record in records:
        f.write(json.dumps(record) + '\n')
  text = markdown(records)
  if args.markdown:
    with open(args.markdown, 'w', encoding='utf-8') as f:
      f.write(text)
  print(text, end='')


if __name__ == '__main__':
  main()
