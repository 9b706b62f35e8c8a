"""hf_centered.tasks: the registry's contract with the runner, checked for every registered task."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from transformers import TrainingArguments

from hf_centered import finetuning
from hf_centered.auto import auto_class_name
from hf_centered.configuration_centered import CenteredBertConfig, CenteredViTConfig
from hf_centered.finetuning import RUNNER_ARGUMENT_CLASSES, main
from hf_centered.hub import PIPELINE_TAGS
from hf_centered.tasks import TASKS, UsageError, builtin_datasets, task_of_dataset
from hf_centered.tasks.base import IMAGE, TEXT

TASK_NAMES = list(TASKS)
# Every option a task adds, with its task: each must be refused with any other task.
TASK_OPTIONS = [
    (task.name, option)
    for task in TASKS.values()
    if task.arguments is not None
    for option in dataclasses.fields(task.arguments)
]


def test_the_default_tasks_are_registered():
    assert {"text-classification", "image-classification"} <= set(TASKS)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_contract(name):
    task = TASKS[name]
    assert task.name == name and task.modality in (TEXT, IMAGE)
    assert task.metric_names, "a task reports at least one metric"
    if task.model_class is not None:  # the dedicated head is the one its Auto class loads for the dedicated family
        config_class = CenteredViTConfig if task.modality == IMAGE else CenteredBertConfig
        assert task.model_class.config_class is config_class
        assert task.model_class.auto_model_classes()[task.auto_class] is task.model_class
    if task.arguments is not None:
        assert dataclasses.is_dataclass(task.arguments)
        task.arguments()  # every task option has a default: a run of another task parses without it


@pytest.mark.parametrize("name", TASK_NAMES)
def test_the_head_is_exported_with_the_task_as_pipeline_tag(name):
    """The head an --architecture of the task's default family builds: its Auto class is the task's, whose pipeline
    tag is the task's name."""
    task = TASKS[name]
    tiny = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=9)
    if task.modality == IMAGE:
        tiny.update(image_size=8, patch_size=4, num_channels=1)
    config = finetuning.architecture_config(json.dumps(tiny), task, {})
    model = task.head_class(config)(config)
    assert auto_class_name(model) == task.auto_class and PIPELINE_TAGS[task.auto_class] == name


def test_a_built_in_dataset_runs_its_first_readers_task_by_default():
    for dataset in builtin_datasets():
        readers = [name for name, task in TASKS.items() if dataset in task.builtin_datasets]
        assert task_of_dataset(dataset) == readers[0]


def test_task_options_do_not_clash():
    runner = {item.name for cls in RUNNER_ARGUMENT_CLASSES for item in dataclasses.fields(cls)}
    runner |= {item.name for item in dataclasses.fields(TrainingArguments)}
    options = [option.name for _, option in TASK_OPTIONS]
    assert len(options) == len(set(options)), "two tasks define the same option"
    assert not set(options) & runner, "a task option shadows a runner option"


@pytest.mark.parametrize(("owner", "option"), TASK_OPTIONS, ids=lambda item: getattr(item, "name", item))
def test_an_option_of_another_task_is_refused(owner, option, tmp_path, capsys):
    other = next(name for name in TASK_NAMES if name != owner)
    value = option.default if option.default is not dataclasses.MISSING else option.default_factory()
    changed = not value if isinstance(value, bool) else (value + 1 if isinstance(value, (int, float)) else "other")
    argv = ["--task", other, "--dataset_name", "anything", "--output_dir", str(tmp_path / "out")]
    argv += [f"--{option.name}", str(changed)]
    with pytest.raises(UsageError):
        main(argv)
    assert f"--{option.name} is an option of --task {owner}, not of --task {other}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


UNREAD_COLUMN_OPTIONS = [
    (name, option)
    for name, task in TASKS.items()
    for option in finetuning.SHARED_COLUMN_OPTIONS
    if option not in task.column_options
]


@pytest.mark.parametrize(("name", "option"), UNREAD_COLUMN_OPTIONS)
def test_a_column_option_the_task_does_not_read_is_refused(name, option, tmp_path, capsys):
    argv = ["--task", name, "--dataset_name", "anything", "--output_dir", str(tmp_path / "out"), f"--{option}", "x"]
    with pytest.raises(UsageError):
        main(argv)
    err = capsys.readouterr().err
    assert f"--{option} is not read by --task {name}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_is_a_choice_of_the_command_line(name, capsys):
    with pytest.raises(SystemExit):
        finetuning.parse_arguments(["--help"])
    # argparse wraps the help text, breaking lines after hyphens
    assert name in re.sub(r"-\s+", "-", capsys.readouterr().out)


@pytest.mark.parametrize("validation_format", ["csv", "jsonl", "parquet"])
def test_training_and_validation_files_may_differ_in_format(validation_format, tmp_path):
    import pandas as pd

    from hf_centered.tasks.base import load_data_files

    train = pd.DataFrame({"text": ["a good film", "a dull film", "fine"], "label": [1, 0, 1]})
    validation = pd.DataFrame({"text": ["great", "awful"], "label": [1, 0]})
    train.to_csv(tmp_path / "train.csv", index=False)
    path = tmp_path / f"validation.{validation_format}"
    {
        "csv": lambda: validation.to_csv(path, index=False),
        "jsonl": lambda: validation.to_json(path, orient="records", lines=True),
        "parquet": lambda: validation.to_parquet(path),
    }[validation_format]()
    data_args = finetuning.DataArguments(train_file=str(tmp_path / "train.csv"), validation_file=str(path))
    raw = load_data_files(data_args, seed=0)
    assert raw["train"].to_dict() == train.to_dict(orient="list")
    assert raw["validation"].to_dict() == validation.to_dict(orient="list")
