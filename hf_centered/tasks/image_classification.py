"""`image-classification`: one label per image, a [CLS]-token head on a ViT; accuracy and macro-F1.

Built-in offline dataset: `digits`, scikit-learn's 1,797 handwritten 8×8 digits, scaled to [0, 1], resized to the
model's `image_size` and repeated over its `num_channels`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import default_data_collator

from .. import data as offline_data
from ..metrics import compute_metrics
from ..modeling_centered_vit import CenteredViTForImageClassification
from .base import IMAGE, Task, TaskData, class_names_for, dataset_dict, fail, split_indices, subsample_splits

if TYPE_CHECKING:
    from ..finetuning import FinetuneArguments


class ImageClassification(Task):
    name = "image-classification"
    modality = IMAGE
    auto_class = "AutoModelForImageClassification"
    model_class = CenteredViTForImageClassification
    builtin_datasets = ("digits",)
    metric_names = ("accuracy", "f1_macro")
    head_modules = ("classifier",)  # PEFT adds a head to modules_to_save itself only for its text task types

    def load_data(self, args: FinetuneArguments, config, processor) -> TaskData:
        if args.data.dataset_name not in self.builtin_datasets:
            fail(f"image-classification data come from the built-in {', '.join(self.builtin_datasets)} dataset only")
        images, labels = offline_data.digits()
        labels = [int(label) for label in labels]
        train_idx, eval_idx = split_indices(labels, args.data.validation_split_fraction, args.training.seed)
        raw = dataset_dict({"pixel_values": digits_pixel_values(images, config), "label": labels}, train_idx, eval_idx)
        label_names = class_names_for(raw, [str(digit) for digit in range(10)], args.model.num_labels)
        train, evaluation = subsample_splits(raw, args)
        return TaskData(
            train=train.with_format("torch").rename_column("label", "labels"),
            evaluation=evaluation.with_format("torch").rename_column("label", "labels"),
            dataset_label=args.data.dataset_name,
            label_names=label_names,
        )

    def data_collator(self, args: FinetuneArguments, processor):
        return default_data_collator

    def compute_metrics(self, data: TaskData):
        return compute_metrics


def digits_pixel_values(images: np.ndarray, image_config) -> list[np.ndarray]:
    """Digits scaled to [0, 1], resized to the model's image_size and repeated over its num_channels."""
    pixels = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / offline_data.DIGITS_MAX_VALUE
    size = image_config.image_size
    if pixels.shape[-1] != size:
        pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    pixels = pixels.repeat(1, image_config.num_channels, 1, 1)
    return list(pixels.numpy())
