"""Checkpoints: checksums at save, corrupt/torn/unreadable/mismatched ones rejected in one line,
restore falls back to the newest intact one, and nothing is pruned before a newer one is verified."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from tests.helpers import STATE_EMBED as EMBED, STATE_VOCAB as VOCAB
from tests.helpers import biggest_file, corrupt, make_state, save_steps
from training import checkpoint as checkpoint_lib
from training import state as state_lib


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def restore_latest(workdir, embed=EMBED, settings=None):
  checkpointer = checkpoint_lib.Checkpointer(str(workdir), 3, 0)
  lines = []
  try:
    result = checkpointer.restore_latest(state_lib.abstract_state(make_state(0, embed)),
                                         settings=settings, report=lines.append)
  finally:
    checkpointer.close()
  return result, lines


def test_checksums_are_written_for_every_file_and_match(tmp_path):
  save_steps(tmp_path, [2, 4])
  for step in (2, 4):
    manifest = json.loads((tmp_path / 'checkpoint_checksums' / f'step_{step}.json').read_text())
    assert manifest['files'] == checkpoint_lib.checksums(
        checkpoint_lib.epath.Path(tmp_path / 'checkpoints' / str(step)))
    assert any(name.startswith('state/') for name in manifest['files'])
  (step, state, data_state), lines = restore_latest(tmp_path)
  assert step == 4 and data_state == {'position': 4} and lines == []
  np.testing.assert_array_equal(state.params['token_embed']['embedding'], 4.0)


@pytest.mark.parametrize('damage', ['corrupt', 'truncate', 'data_state', 'metadata'])
def test_a_damaged_newest_checkpoint_is_one_line_and_the_older_one_restores(tmp_path, damage):
  save_steps(tmp_path, [2, 4])
  if damage == 'corrupt':
    corrupt(biggest_file(tmp_path, 4))
  elif damage == 'truncate':
    truncate(biggest_file(tmp_path, 4))
  elif damage == 'data_state':
    os.remove(tmp_path / 'data_state' / 'step_4.process_0.json')
  else:  # unreadable metadata, with no checksum file to catch it first
    os.remove(tmp_path / 'checkpoint_checksums' / 'step_4.json')
    (tmp_path / 'checkpoints' / '4' / 'state' / '_METADATA').write_text('{"tree_metadata": {')
  (step, state, data_state), lines = restore_latest(tmp_path)
  assert step == 2 and data_state == {'position': 2}
  np.testing.assert_array_equal(state.params['token_embed']['embedding'], 2.0)
  assert len(lines) == 1 and '\n' not in lines[0]
  assert lines[0].startswith(f'Checkpoint {tmp_path}/checkpoints/4 cannot be restored: ')
  expected = {'corrupt': 'does not match its sha256', 'truncate': 'torn',
              'data_state': 'data position', 'metadata': 'Expecting property name'}[damage]
  assert expected in lines[0]
  # The rejected one is set aside, so the run can write step 4 again.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
  assert [n.split('.')[0] for n in os.listdir(tmp_path / 'checkpoints_rejected')] == ['4']
  save_steps(tmp_path, [4])
  assert restore_latest(tmp_path)[0][0] == 4


def test_corrupted_bytes_without_checksums_never_restore_as_garbage(tmp_path):
  """A checkpoint from before checksums existed: a corrupted array fails to decode or is
  non-finite; either way it is rejected, never restored."""
  save_steps(tmp_path, [2, 4])
  os.remove(tmp_path / 'checkpoint_checksums' / 'step_4.json')
  corrupt(biggest_file(tmp_path, 4))
  (step, state, _), lines = restore_latest(tmp_path)
  assert step == 2 and len(lines) == 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_shape_mismatch_names_the_setting(tmp_path):
  save_steps(tmp_path, [2])
  with pytest.raises(checkpoint_lib.CheckpointError) as error:
    restore_latest(tmp_path, embed=16, settings={'model.embed_dim': 16, 'model.vocab_size': VOCAB})
  message = str(error.value)
  assert '\n' not in message
  assert 'step 2' in message and 'config.model.embed_dim is 16 here but was 8' in message
  assert 'params/token_embed/embedding has shape (16, 8) there but (16, 16) here' in message
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']  # nothing moved when none fits


def test_every_checkpoint_damaged_is_one_line_error(tmp_path):
  save_steps(tmp_path, [2, 4])
  for step in (2, 4):
    corrupt(biggest_file(tmp_path, step))
  with pytest.raises(checkpoint_lib.CheckpointError, match='No checkpoint in .* can be restored; '
                     'the newest, step 4, cannot: .*sha256'):
    restore_latest(tmp_path)


def test_nothing_is_pruned_before_a_newer_checkpoint_is_verified(tmp_path, monkeypatch):
  save_steps(tmp_path, [2, 4, 6], keep=2)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '6']  # keep=2 once verified
  assert sorted(os.listdir(tmp_path / 'checkpoint_checksums')) == ['step_4.json', 'step_6.json']
  assert sorted(os.listdir(tmp_path / 'data_state')) == ['step_4.process_0.json',
                                                         'step_6.process_0.json']

  def unreadable(step_dir):
    raise OSError(5, 'Input/output error')

  monkeypatch.setattr(checkpoint_lib, 'checksums', unreadable)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), 2, 0)
  checkpointer.save(8, make_state(8), {'position': 8})
  with pytest.raises(checkpoint_lib.CheckpointError, match='checkpoints/8: Input/output error'):
    checkpointer.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '6', '8']  # 4 kept: 8 unverified
  assert checkpointer.last_saved_step is None


def test_intact_note_says_what_was_written(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), 2, 0)
  assert checkpointer.intact_note().startswith('no checkpoint was written')
  checkpointer.save(3, make_state(3), {'position': 3})
  assert 'step 3 is intact' in checkpointer.intact_note()
  assert checkpointer.last_saved_step == 3
  checkpointer.close()


def test_a_partial_restore_reads_only_the_fields_asked_for(tmp_path):
  checkpointer = save_steps(tmp_path, [2])  # the checkpointer that saved, closed
  abstract = state_lib.abstract_state(make_state(0))
  restored, data_state = checkpointer.restore(2, {'params': abstract.params}, partial=True)
  assert set(restored) == {'params'} and data_state == {'position': 2}
  jax.tree.map(np.testing.assert_array_equal, restored['params'], make_state(2).params)
  wide = state_lib.abstract_state(make_state(0, embed=16))
  with pytest.raises(checkpoint_lib.CheckpointRejected) as error:
    checkpointer.restore(2, {'params': wide.params}, partial=True,
                         settings={'model.embed_dim': 16})
  assert '\n' not in str(error.value)
  assert 'config.model.embed_dim is 16 here but was 8' in str(error.value)
