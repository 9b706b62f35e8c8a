"""`image-segmentation` (semantic): a class per pixel from Segmenter's linear decoder on a ViT; mean IoU, mean class
accuracy and overall pixel accuracy.

Data, each as pairs of an image and its mask (a single-channel map of class ids the image's size; the ignore index,
`config.semantic_loss_ignore_index` = 255, marks pixels that count neither in the loss nor in the metrics):
- the built-in offline `digit_mosaics` (`digit_mosaics` below): scikit-learn's 8×8 digits placed on a larger canvas,
  `mosaic_digits` per image, each in a cell of its own; class 0 is the background and class d + 1 the ink of digit
  d, so 11 classes. The digits themselves are split into training and evaluation digits first (stratified by digit,
  a seeded `validation_split_fraction` of them), and each side's mosaics are drawn from its own digits only, so no
  digit image is seen in both training and evaluation;
- a folder (`--train_dir`, optionally `--validation_dir`) holding `images/` and `masks/`, a mask per image with the
  same file stem (masks as single-channel PNGs of class ids);
- csv/json/parquet files (`--train_file`) or a Hub dataset (`--dataset_name`) with an image column (`--image_column`)
  and a mask column (`--label_column`), as images or as paths to image files.
Class names come from `--id2label_file`, else `--num_labels` (`LABEL_<i>`), else the largest class id of the masks.

Images are converted to the model's `num_channels` and go through the model's image processor (resized to its size,
rescaled, normalised where it normalises); masks are resized to the same size with nearest-neighbour interpolation,
so they keep their class ids. Both happen on the fly (`Dataset.with_transform`), as in transformers' examples, so
large datasets are never stored preprocessed. The metrics compare the predicted and reference maps at the model's
input size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image
from torch.nn import functional as F
from transformers import EvalPrediction, default_data_collator

from .. import data as offline_data
from ..metrics import load_metric
from ..modeling_centered_vit import CenteredViTForSemanticSegmentation
from .base import (
    IMAGE,
    Task,
    TaskData,
    dataset_dict,
    fail,
    load_data_files,
    require_columns,
    require_examples,
    split_indices,
    subsample_splits,
)

if TYPE_CHECKING:
    from ..finetuning import FinetuneArguments

DIGIT_MOSAICS = "digit_mosaics"
BACKGROUND = "background"
DIGIT_SIZE = 8
"""sklearn's digits are 8×8 pixels."""
INK_THRESHOLD = 8
"""A digit pixel is ink (labelled with its digit) from this grey level on. Each of sklearn's grey levels (0..16)
counts the ink pixels of a 4×4 block of the original 32×32 bitmap, so 8 means that at least half the block is ink;
fainter pixels of a digit are background."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# PIL modes of single-channel images; a mask holds class ids, never colours.
MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")
METRIC_NAMES = ("mean_iou", "mean_accuracy", "overall_accuracy")


@dataclass
class ImageSegmentationArguments:
    """Options of `--task image-segmentation`."""

    mosaic_images: int = field(
        default=2000,
        metadata={
            "help": f"{DIGIT_MOSAICS}: images generated, training and evaluation together (validation_split_fraction "
            "of them are evaluation images)."
        },
    )
    mosaic_size: int = field(
        default=32, metadata={"help": f"{DIGIT_MOSAICS}: side of the square canvas, in pixels (>= {DIGIT_SIZE})."}
    )
    mosaic_digits: int = field(
        default=3,
        metadata={
            "help": f"{DIGIT_MOSAICS}: digits per image, each in a random cell of a grid of {DIGIT_SIZE}-pixel "
            f"cells (larger when mosaic_size is not a multiple of {DIGIT_SIZE}): at most "
            f"(mosaic_size // {DIGIT_SIZE})**2, e.g. 16 on 32×32."
        },
    )
    train_dir: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a folder holding images/ and masks/, a mask per image with the same file stem "
            "(single-channel PNGs of class ids; 255 marks pixels to ignore). Replaces --dataset_name."
        },
    )
    validation_dir: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation data, a folder like --train_dir; default: a seeded validation_split_fraction of it."
        },
    )
    image_column: str = field(
        default="image",
        metadata={"help": "Image column of files and Hub datasets (the masks are in --label_column)."},
    )
    id2label_file: str | None = field(
        default=None,
        metadata={
            "help": 'Class names: a JSON list, or an object {"0": "background", "1": ...}. Default: LABEL_<i> for '
            "--num_labels classes, or for as many as the largest class id in the masks asks for."
        },
    )
    reduce_labels: bool = field(
        default=False,
        metadata={
            "help": "Masks whose id 0 is a background that is no class (e.g. ADE20K): 0 becomes the ignored 255 "
            "and every other id moves down by one."
        },
    )


# The kinds of data a run reads, and which options apply to which (any other would be ignored, so it is refused).
BUILTIN_SOURCE, FOLDER_SOURCE, FILES_SOURCE = f"the built-in {DIGIT_MOSAICS}", "--train_dir", "files and Hub datasets"
MOSAIC_OPTIONS = ("mosaic_images", "mosaic_size", "mosaic_digits")
OPTION_SOURCES = {
    **{name: (BUILTIN_SOURCE,) for name in MOSAIC_OPTIONS},
    "validation_dir": (FOLDER_SOURCE,),
    "image_column": (FILES_SOURCE,),
    "id2label_file": (FOLDER_SOURCE, FILES_SOURCE),
    "reduce_labels": (FOLDER_SOURCE, FILES_SOURCE),
}


@dataclass
class DigitMosaics:
    """Generated mosaics: `images` (N, S, S) float grey levels in [0, 16] as sklearn's digits, `label_maps` (N, S, S)
    uint8 class ids (0 background, digit + 1 where its ink is), and `placements[n]` the (digit index, top, left) of
    each digit placed on image n, in the order drawn."""

    images: np.ndarray
    label_maps: np.ndarray
    placements: list[list[tuple[int, int, int]]]


def mosaic_grid(canvas_size: int) -> tuple[int, int]:
    """(cells per side, cell size in pixels) of a canvas: as many cells of at least a digit's size as fit. A cell
    holds one digit at most, so no two digits overlap, and `cells per side`² digits fit."""
    cells_per_side = canvas_size // DIGIT_SIZE
    return cells_per_side, canvas_size // cells_per_side


def digit_mosaics(
    digit_images: np.ndarray,
    digit_labels: np.ndarray,
    num_images: int,
    canvas_size: int,
    digits_per_image: int,
    seed: int,
) -> DigitMosaics:
    """`num_images` square canvases of `canvas_size` pixels, each holding `digits_per_image` digits drawn at random
    (with replacement over images) from `digit_images` (M, 8, 8), grey levels 0..16, with classes `digit_labels`.

    The canvas is a grid of cells (`mosaic_grid`); each digit goes to a cell of its own, drawn at random, at a random
    offset inside it when the cell is larger than the digit (pixels beyond the last cell stay background). Placing
    digits anywhere instead made the task too hard for a small ViT trained in minutes, as a ViT learns translation
    invariance from data only: on 24×24 mosaics of 4 digits (1,600 training images, 4 layers of width 64) free
    placement reached a mean IoU of 0.08-0.11 in 500-1,000 steps (patch 4 and 2; all background scores 0.08), the
    grid 0.24 in 750 steps (patch 4). The label map is `digit + 1` where the digit's grey level is at least
    `INK_THRESHOLD`, 0 elsewhere. Deterministic given `seed`.
    """
    cells_per_side, cell_size = mosaic_grid(canvas_size)
    if digits_per_image > cells_per_side**2:
        raise ValueError(
            f"{digits_per_image} digits do not fit on a {canvas_size}×{canvas_size} canvas, which has "
            f"{cells_per_side}×{cells_per_side} cells of one digit each"
        )
    rng = np.random.default_rng(seed)
    images = np.zeros((num_images, canvas_size, canvas_size), dtype=np.float32)
    label_maps = np.zeros((num_images, canvas_size, canvas_size), dtype=np.uint8)
    placements = []
    for image, label_map in zip(images, label_maps, strict=True):
        placed = []
        for cell in rng.choice(cells_per_side**2, size=digits_per_image, replace=False):
            row, column = divmod(int(cell), cells_per_side)
            top, left = (index * cell_size + int(rng.integers(cell_size - DIGIT_SIZE + 1)) for index in (row, column))
            digit = int(rng.integers(len(digit_images)))
            box = np.s_[top : top + DIGIT_SIZE, left : left + DIGIT_SIZE]
            image[box] = digit_images[digit]
            label_map[box] = np.where(digit_images[digit] >= INK_THRESHOLD, digit_labels[digit] + 1, 0)
            placed.append((digit, top, left))
        placements.append(placed)
    return DigitMosaics(images=images, label_maps=label_maps, placements=placements)


def mosaic_splits(options: ImageSegmentationArguments, validation_fraction: float, seed: int) -> DatasetDict:
    """Training and evaluation mosaics, each drawn from its own share of the digits (split stratified by digit)."""
    digit_images, digit_labels = offline_data.digits()
    train_digits, eval_digits = split_indices([int(label) for label in digit_labels], validation_fraction, seed)
    eval_images = max(1, round(options.mosaic_images * validation_fraction))
    split_seeds = np.random.SeedSequence(seed).generate_state(2)
    splits = {}
    for split, digits, num_images, split_seed in (
        ("train", train_digits, options.mosaic_images - eval_images, split_seeds[0]),
        ("validation", eval_digits, eval_images, split_seeds[1]),
    ):
        mosaics = digit_mosaics(
            digit_images[digits],
            digit_labels[digits],
            num_images,
            options.mosaic_size,
            options.mosaic_digits,
            int(split_seed),
        )
        # 8-bit grey images, as the image processor and the pipeline take them; stored as PNGs, as Hub datasets are.
        grey_levels = np.rint(mosaics.images * (255 / offline_data.DIGITS_MAX_VALUE)).astype(np.uint8)
        splits[split] = Dataset.from_dict(
            {
                "pixel_values": [Image.fromarray(image) for image in grey_levels],
                "labels": [Image.fromarray(label_map) for label_map in mosaics.label_maps],
                **pair_names(f"{split} mosaic", num_images),
            },
            features=Features(
                pixel_values=ImageFeature(),
                labels=ImageFeature(),
                image_name=Value("string"),
                mask_name=Value("string"),
            ),
        )
    return DatasetDict(splits)


def folder_pairs(folder: Path) -> dict[str, list[str]]:
    """The image and mask paths of `folder` (`images/`, `masks/`, paired by file stem), in file-name order."""
    images, masks = ({}, {})
    for subfolder, found in (("images", images), ("masks", masks)):
        for path in sorted((folder / subfolder).iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                if path.stem in found:
                    fail(f"{found[path.stem]} and {path} share the stem {path.stem!r}; keep one file per stem")
                found[path.stem] = path
    for found, counterparts, kind, other in ((images, masks, "images", "masks"), (masks, images, "masks", "images")):
        missing = sorted(set(found) - set(counterparts))
        if missing:
            fail(
                f"{len(missing)} of the {kind} in {folder} have no file of the same stem in {folder / other} "
                f"({', '.join(found[stem].name for stem in missing[:5])}); every image needs its mask and every "
                "mask its image"
            )
    if not images:
        fail(f"{folder / 'images'} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return {
        "pixel_values": [str(images[stem]) for stem in sorted(images)],
        "labels": [str(masks[stem]) for stem in sorted(images)],
        "image_name": [str(images[stem]) for stem in sorted(images)],
        "mask_name": [str(masks[stem]) for stem in sorted(images)],
    }


def folder_splits(options: ImageSegmentationArguments, validation_fraction: float, seed: int) -> DatasetDict:
    """`--train_dir` (and `--validation_dir`, else a seeded share of the training folder's files)."""
    train = folder_pairs(Path(options.train_dir))
    if options.validation_dir is not None:
        return DatasetDict(
            train=Dataset.from_dict(train), validation=Dataset.from_dict(folder_pairs(Path(options.validation_dir)))
        )
    files = train["image_name"]
    if len(files) < 2:
        fail(f"{options.train_dir} holds {len(files)} image; a split into training and evaluation needs at least 2")
    train_idx, eval_idx = split_indices([0] * len(files), validation_fraction, seed, groups=files)
    return dataset_dict(train, train_idx, eval_idx)


def pair_names(rows: str, count: int) -> dict[str, list[str]]:
    """How errors name the image and the mask of each of `count` rows of data (folders name their files)."""
    return {
        "image_name": [f"the image of {rows} {i}" for i in range(count)],
        "mask_name": [f"the mask of {rows} {i}" for i in range(count)],
    }


def open_image(value: Any, name: str) -> Image.Image:
    """An image given as a PIL image, an array (height, width[, channels]) or a path to an image file; `name` says
    which in errors."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (str, Path)):
        try:
            with Image.open(value) as image:
                image.load()
                return image
        except (OSError, ValueError) as error:
            fail(f"cannot read {name}: {error}")
    array = np.asarray(value)
    if array.ndim not in (2, 3):
        fail(f"{name} is an array of shape {array.shape}; an image is (height, width[, channels])")
    if array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() <= 255:
        array = array.astype(np.uint8)  # nested lists of a dataset come back as int64
    return Image.fromarray(array)


def class_id_map(value: Any, name: str, ignore_index: int, reduce_labels: bool) -> np.ndarray:
    """A mask as an int64 (height, width) array of class ids; `reduce_labels` makes 0 the ignore index and moves
    every other id down by one."""
    if isinstance(value, np.ndarray | list):
        mask = np.asarray(value)
        if mask.ndim != 2:
            fail(f"{name} is an array of shape {mask.shape}; a mask is (height, width) of class ids")
    else:
        image = open_image(value, name)
        if image.mode not in MASK_MODES:
            fail(
                f"{name} has PIL mode {image.mode}; a mask is a single-channel image of class ids "
                f"(PIL mode {', '.join(MASK_MODES)})"
            )
        mask = np.asarray(image)
    mask = mask.astype(np.int64)
    if reduce_labels:
        mask = np.where((mask == 0) | (mask == ignore_index), ignore_index, mask - 1)
    return mask


def image_size(value: Any, name: str) -> tuple[int, int]:
    """(height, width) of an image."""
    if isinstance(value, np.ndarray | list):
        return np.asarray(value).shape[:2]
    width, height = open_image(value, name).size
    return height, width


def mask_class_ids(
    split: str, dataset: Dataset, ignore_index: int, reduce_labels: bool
) -> list[tuple[str, np.ndarray]]:
    """(mask name, class ids present) of every mask of `dataset`; a mask of another size than its image is an
    error."""
    found = []
    for rows in dataset.iter(batch_size=64):
        pairs = zip(rows["pixel_values"], rows["labels"], rows["image_name"], rows["mask_name"], strict=True)
        for image, mask_value, image_name, mask_name in pairs:
            mask = class_id_map(mask_value, mask_name, ignore_index, reduce_labels)
            height, width = image_size(image, image_name)
            if mask.shape != (height, width):
                fail(
                    f"{mask_name} is {mask.shape[1]}×{mask.shape[0]} pixels but {image_name} is {width}×{height}; "
                    f"a mask must have its image's size (in the {split} data)"
                )
            found.append((mask_name, np.unique(mask[mask != ignore_index])))
    return found


def read_id2label(path: str) -> list[str]:
    """Class names from a JSON list, or an object whose keys are the ids 0..n-1."""
    try:
        names = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        fail(f"cannot read the id2label file {path}: {error}")
    if isinstance(names, dict):
        if set(names) != {str(i) for i in range(len(names))}:
            fail(f"the keys of {path} must be the class ids 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[str(i)] for i in range(len(names))]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        fail(f"{path} must hold a JSON list of class names or an object of class ids to names")
    if len(names) < 2:
        fail(f"{path} names {len(names)} class; segmentation needs at least two")
    return names


def segmentation_label_names(
    options: ImageSegmentationArguments,
    num_labels: int | None,
    class_ids: list[tuple[str, np.ndarray]],
    ignore_index: int,
) -> list[str]:
    """The head's class names, checked against the masks' class ids."""
    if options.id2label_file is not None:
        names = read_id2label(options.id2label_file)
        if num_labels is not None and num_labels != len(names):
            fail(f"num_labels={num_labels} does not match the {len(names)} classes of {options.id2label_file}")
    else:
        if num_labels is None:
            num_labels = 1 + max((int(ids.max()) for _, ids in class_ids if ids.size), default=0)
        if num_labels < 2:
            fail(f"num_labels={num_labels} is not valid: segmentation needs at least two classes")
        names = [f"LABEL_{i}" for i in range(num_labels)]
    check_class_ids(class_ids, len(names), ignore_index)
    return names


def check_class_ids(class_ids: list[tuple[str, np.ndarray]], num_labels: int, ignore_index: int) -> None:
    """Every mask's class ids (the ignore index left out) lie in 0..num_labels-1."""
    for mask_name, ids in class_ids:
        bad = ids[(ids < 0) | (ids >= num_labels)]
        if bad.size:
            fail(
                f"{mask_name} holds class id(s) {bad[:10].tolist()} outside 0..{num_labels - 1} "
                f"(num_labels={num_labels}); pixels to leave out hold the ignore index {ignore_index}"
            )


class SegmentationTransform:
    """`Dataset.with_transform` of a batch: images to the model's channels and through the image processor, masks
    to class ids resized (nearest neighbour) to the processed size. Rows without masks (the over-smoothing profile's)
    give pixel values only."""

    def __init__(self, processor, num_channels: int, ignore_index: int, reduce_labels: bool) -> None:
        self.processor = processor
        self.mode = "L" if num_channels == 1 else "RGB"
        self.ignore_index = ignore_index
        self.reduce_labels = reduce_labels

    def __call__(self, batch: dict[str, list]) -> dict[str, torch.Tensor]:
        images = [open_image(value, "an image").convert(self.mode) for value in batch["pixel_values"]]
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        features = {"pixel_values": pixel_values}
        if "labels" in batch:
            masks = [class_id_map(value, "a mask", self.ignore_index, self.reduce_labels) for value in batch["labels"]]
            features["labels"] = torch.stack([resize_mask(mask, pixel_values.shape[-2:]) for mask in masks])
        return features


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A class-id map resized to `size` (height, width) by nearest neighbour, with pixel centres aligned as in the
    image's (bilinear, half-pixel) resize; the ids stay exact (float32 holds integers up to 2**24)."""
    tensor = torch.tensor(mask, dtype=torch.float32)[None, None]
    if tuple(mask.shape) != tuple(size):
        tensor = F.interpolate(tensor, size=tuple(size), mode="nearest-exact")
    return tensor[0, 0].long()


def predicted_classes(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The Trainer's `preprocess_logits_for_metrics`: each pixel's class, so evaluation keeps (N, H, W) ids instead
    of (N, num_labels, H, W) logits."""
    return logits.argmax(dim=1)


class ImageSegmentation(Task):
    name = "image-segmentation"
    modality = IMAGE
    auto_class = "AutoModelForSemanticSegmentation"
    model_class = CenteredViTForSemanticSegmentation
    builtin_datasets = (DIGIT_MOSAICS,)
    column_options = ("label_column",)
    arguments = ImageSegmentationArguments
    metric_names = METRIC_NAMES
    head_modules = ("decode_head",)

    def names_own_data(self, args: FinetuneArguments) -> bool:
        return self.options(args).train_dir is not None

    def check_arguments(self, args: FinetuneArguments) -> None:
        options = self.options(args)
        source = self.data_source(args)
        defaults = ImageSegmentationArguments()
        for option, sources in OPTION_SOURCES.items():
            if getattr(options, option) != getattr(defaults, option) and source not in sources:
                fail(f"--{option} applies to {' and '.join(sources)} only, not to {source}")
        if options.train_dir is not None and args.data.train_file is not None:
            fail("give the training data as a folder (--train_dir) or as a file (--train_file), not both")
        for option in ("train_dir", "validation_dir"):
            folder = getattr(options, option)
            if folder is None:
                continue
            if not Path(folder).is_dir():
                fail(f"--{option} {folder} does not exist or is not a folder")
            for subfolder in ("images", "masks"):
                if not (Path(folder) / subfolder).is_dir():
                    fail(f"--{option} {folder} has no {subfolder}/ folder; it must hold images/ and masks/")
        if options.id2label_file is not None and not Path(options.id2label_file).is_file():
            fail(f"id2label file {options.id2label_file} does not exist or is not a file")
        if options.mosaic_images < 2:
            fail(f"mosaic_images={options.mosaic_images} must be >= 2 (training and evaluation need one each)")
        if options.mosaic_size < DIGIT_SIZE:
            fail(f"mosaic_size={options.mosaic_size} must be >= {DIGIT_SIZE}, the size of a digit")
        if options.mosaic_digits < 1:
            fail(f"mosaic_digits={options.mosaic_digits} must be >= 1")
        cells_per_side, cell_size = mosaic_grid(options.mosaic_size)
        if options.mosaic_digits > cells_per_side**2:
            fail(
                f"mosaic_digits={options.mosaic_digits} digits do not fit on a {options.mosaic_size}×"
                f"{options.mosaic_size} canvas: its {cells_per_side}×{cells_per_side} cells of {cell_size} pixels hold "
                f"one digit each, so at most {cells_per_side**2}; use a larger mosaic_size or fewer digits"
            )

    def data_source(self, args: FinetuneArguments) -> str:
        """Which kind of data the run reads, as `OPTION_SOURCES` names them."""
        if self.options(args).train_dir is not None:
            return FOLDER_SOURCE
        if args.data.train_file is None and args.data.dataset_name == DIGIT_MOSAICS:
            return BUILTIN_SOURCE
        return FILES_SOURCE

    def load_data(self, args: FinetuneArguments, config, processor) -> TaskData:
        options, data_args, seed = self.options(args), args.data, args.training.seed
        ignore_index = config.semantic_loss_ignore_index
        source = self.data_source(args)
        if source == BUILTIN_SOURCE:
            raw = mosaic_splits(options, data_args.validation_split_fraction, seed)
            dataset_label = DIGIT_MOSAICS
        elif source == FOLDER_SOURCE:
            raw = folder_splits(options, data_args.validation_split_fraction, seed)
            dataset_label = Path(options.train_dir).resolve().name
        else:
            raw = require_columns(
                load_data_files(data_args, seed, self.builtin_datasets), [options.image_column, data_args.label_column]
            )
            raw = raw.rename_columns({options.image_column: "pixel_values", data_args.label_column: "labels"})
            for split, dataset in raw.items():
                for column, names in pair_names(f"{split} row", len(dataset)).items():
                    dataset = dataset.add_column(column, names)
                raw[split] = dataset
            dataset_label = data_args.dataset_name or Path(data_args.train_file).stem
        require_examples(raw)
        train, evaluation = subsample_splits(raw, args)
        class_ids = [
            found
            for split, dataset in (("train", train), ("validation", evaluation))
            for found in mask_class_ids(split, dataset, ignore_index, options.reduce_labels)
        ]
        if source == BUILTIN_SOURCE:
            label_names = [BACKGROUND, *(str(digit) for digit in range(10))]
            if args.model.num_labels not in (None, len(label_names)):
                fail(f"num_labels={args.model.num_labels} does not match {DIGIT_MOSAICS}, which has 11 classes")
            check_class_ids(class_ids, len(label_names), ignore_index)
        else:
            label_names = segmentation_label_names(options, args.model.num_labels, class_ids, ignore_index)
        transform = SegmentationTransform(processor, config.num_channels, ignore_index, options.reduce_labels)
        return TaskData(
            train=train.remove_columns(["image_name", "mask_name"]).with_transform(transform),
            evaluation=evaluation.remove_columns(["image_name", "mask_name"]).with_transform(transform),
            dataset_label=dataset_label,
            label_names=label_names,
            metric_inputs=ignore_index,
        )

    def data_collator(self, args: FinetuneArguments, processor):
        return default_data_collator

    def compute_metrics(self, data: TaskData) -> Callable[[EvalPrediction], dict[str, float]]:
        num_labels, ignore_index = len(data.label_names), data.metric_inputs

        def segmentation_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
            scores = load_metric("mean_iou").compute(
                predictions=list(eval_prediction.predictions),
                references=list(eval_prediction.label_ids),
                num_labels=num_labels,
                ignore_index=ignore_index,
                reduce_labels=False,  # --reduce_labels was applied to the masks when they were read
            )
            return {name: float(scores[name]) for name in METRIC_NAMES}

        return segmentation_metrics

    def preprocess_logits_for_metrics(self):
        return predicted_classes

    def card_hyperparameters(self, args: FinetuneArguments) -> dict[str, Any]:
        if self.data_source(args) != BUILTIN_SOURCE:
            return {}
        options = self.options(args)
        return {name: getattr(options, name) for name in MOSAIC_OPTIONS}
