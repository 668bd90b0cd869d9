"""Every downstream task's settings with their defaults: `config.task` (besides `name`) of
configs/finetune.py.

Kept apart from the tasks (downstream/tasks/), which sit above the configs, so that
configs/finetune.py reads a task's settings without importing downstream; each task's module
registers under its name with its defaults from here (`@register(name, defaults=SECTIONS[name])`),
and registering a task of that folder whose defaults differ from its section here, or that has
none, is a one-line error. A new task adds its section (`{}` if it takes only `COMMON`).
"""

# Settings every task accepts, before its own.
COMMON = dict(
    template='',  # prompting template with {text} (and {text_pair}); '' = the task's default
    label_words='',  # comma-separated, one per label; '' = the task's default
    max_train_examples=0,  # 0 = all
    max_eval_examples=0,  # caps validation and test; 0 = all
)

# Prepared TFDS datasets (downstream/tasks/tfds.py): GLUE by name and SQuAD.
_TFDS = dict(data_dir='', train_split='train', validation_split='validation', test_split='')

# The standard library's docstrings (downstream/tasks/builtin.py).
_FILES = dict(max_files=0, min_doc_chars=100, max_chars=600)

SECTIONS: dict[str, dict] = {
    'glue/cola': _TFDS,
    'glue/mrpc': _TFDS,
    'glue/qnli': _TFDS,
    'glue/rte': _TFDS,
    'glue/sst2': _TFDS,
    'glue/stsb': _TFDS,
    'local': dict(
        train_file='', validation_file='', test_file='',
        text_field='text', text_pair_field='', label_field='label',
        kind='classification',  # classification | regression
        label_names='',  # comma-separated; '' = the sorted distinct labels of the train file
        metrics='',  # comma-separated; '' = accuracy (classification) or pearson,spearman
    ),
    'multiple_choice': dict(file='', text_field='text', choices_field='choices',
                            label_field='label'),
    'squad': _TFDS,
    'squad_json': dict(train_file='', validation_file='', test_file=''),
    'stdlib_package': dict(_FILES, num_classes=8),
    'stdlib_qa': dict(_FILES, entries_per_context=6),
    'stdlib_same_module': dict(_FILES, max_chars=300),
}


def settings(name: str) -> dict:
  """Every setting task `name` takes, with its default: COMMON, then its own section."""
  return {**COMMON, **SECTIONS[name]}
