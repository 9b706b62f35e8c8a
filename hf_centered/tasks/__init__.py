"""The fine-tuning tasks of `finetune.py --task`, by Hub pipeline tag. Adding a task = one module + one entry here."""

from __future__ import annotations

from .base import Task, TaskData, UsageError, fail
from .fill_mask import FillMask
from .image_classification import ImageClassification
from .image_segmentation import ImageSegmentation
from .question_answering import QuestionAnswering
from .text_classification import TextClassification
from .text_generation import TextGeneration
from .token_classification import TokenClassification

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        TextClassification(),
        ImageClassification(),
        ImageSegmentation(),
        TokenClassification(),
        FillMask(),
        QuestionAnswering(),
        TextGeneration(),
    )
}
DEFAULT_TASK = "text-classification"


def available_tasks() -> list[str]:
    return list(TASKS)


def task_of_dataset(dataset_name: str | None) -> str | None:
    """The task a run of the built-in dataset `dataset_name` trains by default: the first that lists it (None for
    other names)."""
    return next((task.name for task in TASKS.values() if dataset_name in task.builtin_datasets), None)


def builtin_datasets() -> list[str]:
    return list(dict.fromkeys(name for task in TASKS.values() for name in task.builtin_datasets))


__all__ = ["DEFAULT_TASK", "TASKS", "Task", "TaskData", "UsageError", "available_tasks", "builtin_datasets", "fail"]
