"""The GPU suite's report: ours against the peer per row, an out-of-memory rerun noted, and the
host pipeline's ratio to what the device consumed (no timing is asserted, only the arithmetic)."""

import json

import pytest

from benchmarks import host_rate  # flag-free: host_pipeline's flags would clash with train.py's
from benchmarks.peers import summarize


def _write(path, lines):
  path.write_text(''.join(line + '\n' for line in lines))
  return str(path)


def test_summary_divides_ours_by_the_peer_and_notes_a_remat_rerun(tmp_path):
  ours_oom = _write(tmp_path / 'clm.ours.log', ['RESOURCE_EXHAUSTED: Out of memory'])
  ours = _write(tmp_path / 'clm.ours.remat_dots.log', [
      'compiling', json.dumps({'tokens_per_sec': 600_000.0, 'step_time_ms': 54.6, 'batch': 32,
                               'seq': 1024, 'layers': 12, 'width': 768, 'vocab': 50304,
                               'remat': 'dots', 'device': 'NVIDIA H200'})])
  peer = _write(tmp_path / 'clm.peer.log', [json.dumps({'tokens_per_sec': 480_000.0,
                                                        'model': 'nanoGPT', 'batch': 32,
                                                        'seq': 1024, 'layers': 12,
                                                        'width': 768, 'vocab': 50304})])
  host = _write(tmp_path / 'host.log', [json.dumps(
      {'format': 'packed', 'seq_len': 1024, 'path': 'pretokenized', 'tokens_per_sec': 9.0e6,
       'real_tokens_per_sec': 9.0e6, 'device_tokens_per_sec': 600_000.0,
       'host_to_device': 15.0})])
  status = _write(tmp_path / 'status.tsv', [
      '\t'.join(['clm', 'ours', 'failed', '1', '20', ours_oom, '']),
      '\t'.join(['clm', 'ours', 'ok', '0', '40', ours, 'config.model.remat=dots (out of memory without)']),
      '\t'.join(['clm', 'peer', 'ok', '0', '60', peer, '']),
      '\t'.join(['host_pipeline', 'host', 'ok', '0', '30', host, ''])])
  records = summarize.collect(summarize.read_status(status))
  text = summarize.markdown(records)
  clm_row = next(line for line in text.splitlines() if line.startswith('| CLM'))
  assert '| 600k |' in clm_row and clm_row.endswith('| 1.25x |')  # 600k / 480k
  assert '- clm ours: config.model.remat=dots (out of memory without)' in text
  assert '- clm ours: failed (exit 1, 20 s): RESOURCE_EXHAUSTED: Out of memory' in text
  assert '| packed | 1024 | pretokenized | 9.00M | 9.00M | 600k | 15.0x |' in text


def test_consumed_rates_parse_and_a_malformed_one_is_a_one_line_error():
  assert host_rate.parse_consumes(['packed:1024=600000', 'sentence_pairs:512=3.5e5']) == {
      ('packed', 1024): 600_000.0, ('sentence_pairs', 512): 350_000.0}
  for bad in ('packed=600000', 'packed:long=1', 'packed:128'):
    with pytest.raises(ValueError, match='is not FORMAT:SEQ=TOKENS_PER_SEC') as error:
      host_rate.parse_consumes([bad])
    assert '\n' not in str(error.value)
