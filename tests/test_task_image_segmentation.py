"""`finetune.py --task image-segmentation`: digit mosaics, image/mask folders, mask resizing, mean IoU, bad input, and
tiny end-to-end runs (export, pipeline, LoRA, the stock baseline)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    BertConfig,
    EvalPrediction,
    Trainer,
    ViTConfig,
    ViTModel,
    pipeline,
)

from hf_centered import data as offline_data
from hf_centered import finetuning
from hf_centered.finetuning import main, parse_arguments
from hf_centered.tasks import image_segmentation
from hf_centered.tasks.image_segmentation import (
    INK_THRESHOLD,
    ImageSegmentationArguments,
    digit_mosaics,
    mosaic_grid,
    mosaic_splits,
    resize_mask,
)

# A ViT for 12×12 grey images (the 23×23 mosaics and the folders' 11×9 images are resized to it).
TINY_SEGMENTATION_VIT = dict(
    image_size=12,
    patch_size=4,
    num_channels=1,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=20,
)
IMAGE_HEIGHT, IMAGE_WIDTH = 9, 11
MASK_IDS = (0, 1, 2, 3)  # the fixture masks' classes; some pixels also hold the ignore index 255


def fake_digits(count: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct 8×8 "digits" with grey levels 0..16 and classes 0..9 in turn."""
    images = np.random.default_rng(seed).integers(0, 17, size=(count, 8, 8)).astype(np.float64)
    return images, np.arange(count) % 10


def write_pairs(folder: Path, count: int, seed: int) -> None:
    """`count` RGB images of 11×9 pixels and their masks (class ids 0..3, a few ignored pixels), the first mask a
    palette PNG (its indices are the class ids), the others 8-bit grey PNGs."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(count):
        mask = rng.choice(MASK_IDS, size=(IMAGE_HEIGHT, IMAGE_WIDTH)).astype(np.uint8)
        mask[0, :2] = 255
        image = rng.integers(0, 256, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / "images" / f"pair{i}.png")
        mask_image = Image.fromarray(mask)
        if i == 0:
            mask_image = mask_image.convert("P")  # an identity palette: index = grey level = class id
        mask_image.save(folder / "masks" / f"pair{i}.png")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> SimpleNamespace:
    """Image/mask folders, a tiny ViT checkpoint and a BERT configuration."""
    root = tmp_path_factory.mktemp("segmentation_assets")
    write_pairs(root / "train", 6, seed=0)
    write_pairs(root / "validation", 3, seed=1)
    torch.manual_seed(0)
    vit_config = ViTConfig(**{**TINY_SEGMENTATION_VIT, "num_channels": 3})
    ViTModel(vit_config, add_pooling_layer=False).save_pretrained(root / "tiny_vit")
    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20).save_pretrained(
        root / "tiny_bert"
    )
    return SimpleNamespace(root=root, train=root / "train", validation=root / "validation", vit=root / "tiny_vit")


def mosaic_argv(output_dir: Path, *extra: str) -> list[str]:
    """A short digit_mosaics run of the tiny ViT from scratch; `extra` overrides any of it."""
    return [
        "--task", "image-segmentation",
        "--dataset_name", "digit_mosaics",
        "--mosaic_images", "30",
        "--mosaic_size", "23",
        "--mosaic_digits", "2",
        "--architecture", json.dumps(TINY_SEGMENTATION_VIT),
        "--output_dir", str(output_dir),
        "--max_steps", "2",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8",
        "--learning_rate", "1e-3",
        "--save_strategy", "no",
        "--profile_sequences", "8",
        "--seed", "0",
        "--no_baseline",
        *extra,
    ]  # fmt: skip


def folder_argv(train_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--task", "image-segmentation",
        "--train_dir", str(train_dir),
        "--architecture", json.dumps(TINY_SEGMENTATION_VIT),
        "--output_dir", str(output_dir),
        *extra,
    ]  # fmt: skip


def loaded_data(argv: list[str]):
    """The task's data for `argv`, prepared with the run's configuration and image processor."""
    args = parse_arguments(argv)
    config, source = finetuning.resolve_base_config(args)
    processor = finetuning.load_processor(args, config, source)
    return args.task.load_data(args, config, processor), processor


def confusion_matrix(predictions: np.ndarray, references: np.ndarray, num_labels: int, ignore_index: int):
    """counts[reference, prediction] over the pixels whose reference is not ignored."""
    kept = references != ignore_index
    pairs = references[kept].astype(np.int64) * num_labels + predictions[kept].astype(np.int64)
    return np.bincount(pairs, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def confusion_scores(counts: np.ndarray) -> dict[str, float]:
    """Mean IoU and accuracies from a confusion matrix; classes absent from both sides (or from the references, for
    the class accuracy) are left out of the means."""
    hits, references, predictions = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    union = references + predictions - hits
    return {
        "mean_iou": float(np.mean(hits[union > 0] / union[union > 0])),
        "mean_accuracy": float(np.mean(hits[references > 0] / references[references > 0])),
        "overall_accuracy": float(hits.sum() / counts.sum()),
    }


def test_mosaics_are_deterministic_and_labelled_where_the_digits_ink_is():
    digit_images, digit_labels = fake_digits()
    mosaics = digit_mosaics(digit_images, digit_labels, num_images=7, canvas_size=27, digits_per_image=4, seed=3)
    again = digit_mosaics(digit_images, digit_labels, num_images=7, canvas_size=27, digits_per_image=4, seed=3)
    other = digit_mosaics(digit_images, digit_labels, num_images=7, canvas_size=27, digits_per_image=4, seed=4)
    np.testing.assert_array_equal(mosaics.images, again.images)
    np.testing.assert_array_equal(mosaics.label_maps, again.label_maps)
    assert mosaics.placements == again.placements and mosaics.placements != other.placements
    assert mosaics.images.shape == mosaics.label_maps.shape == (7, 27, 27)

    for image, label_map, placed in zip(mosaics.images, mosaics.label_maps, mosaics.placements, strict=True):
        assert len(placed) == 4
        covered = np.zeros(image.shape, dtype=int)
        for digit, top, left in placed:
            box = np.s_[top : top + 8, left : left + 8]
            covered[box] += 1
            np.testing.assert_array_equal(image[box], digit_images[digit])
            ink = digit_images[digit] >= INK_THRESHOLD
            np.testing.assert_array_equal(label_map[box], np.where(ink, digit_labels[digit] + 1, 0))
        assert covered.max() == 1  # no overlap
        assert not image[covered == 0].any() and not label_map[covered == 0].any()  # background elsewhere


def test_each_digit_goes_to_a_cell_of_its_own():
    assert [mosaic_grid(size) for size in (8, 15, 16, 27, 32)] == [(1, 8), (1, 15), (2, 8), (3, 9), (4, 8)]
    digit_images, digit_labels = fake_digits()
    mosaics = digit_mosaics(digit_images, digit_labels, num_images=30, canvas_size=28, digits_per_image=9, seed=0)
    offsets = set()
    for placed in mosaics.placements:  # 3×3 cells of 9 pixels (the 28th row and column stay background)
        assert sorted((top // 9, left // 9) for _, top, left in placed) == [(r, c) for r in range(3) for c in range(3)]
        offsets |= {(top % 9, left % 9) for _, top, left in placed}
    assert offsets == {(0, 0), (0, 1), (1, 0), (1, 1)}  # a digit may sit anywhere inside its cell
    assert not mosaics.images[:, 27].any() and not mosaics.images[:, :, 27].any()
    with pytest.raises(ValueError, match="10 digits do not fit on a 28×28 canvas, which has 3×3 cells of one digit"):
        digit_mosaics(digit_images, digit_labels, num_images=1, canvas_size=28, digits_per_image=10, seed=0)


def test_no_digit_is_in_both_splits(monkeypatch):
    digit_images, digit_labels = fake_digits(count=80)
    monkeypatch.setattr(offline_data, "digits", lambda: (digit_images, digit_labels))
    drawn = []

    def recording_digit_mosaics(images, labels, *args):
        mosaics = digit_mosaics(images, labels, *args)
        drawn.append((images, mosaics))
        return mosaics

    monkeypatch.setattr(image_segmentation, "digit_mosaics", recording_digit_mosaics)
    options = ImageSegmentationArguments(mosaic_images=40, mosaic_size=23, mosaic_digits=3)
    raw = mosaic_splits(options, validation_fraction=0.25, seed=5)
    assert {split: len(dataset) for split, dataset in raw.items()} == {"train": 30, "validation": 10}

    used = {}
    for split, (pool, mosaics) in zip(("train", "validation"), drawn, strict=True):
        used[split] = set()
        for image, placed in zip(stored(raw[split], "pixel_values"), mosaics.placements, strict=True):
            for digit, top, left in placed:  # the stored 8-bit image holds exactly the digits drawn
                expected = np.rint(pool[digit] * 255 / 16).astype(np.uint8)
                np.testing.assert_array_equal(image[top : top + 8, left : left + 8], expected)
                used[split].add(pool[digit].tobytes())
    assert len(used["train"]) > 30 and len(used["validation"]) > 10
    assert not used["train"] & used["validation"]
    # the digits themselves are split, stratified: of 80 digits, 20 are evaluation digits, 2 of each class
    index_of = {image.tobytes(): i for i, image in enumerate(digit_images)}
    pools = [sorted(index_of[image.tobytes()] for image in pool) for pool, _ in drawn]
    assert sorted(pools[0] + pools[1]) == list(range(80))
    assert sorted(digit_labels[pools[1]].tolist()) == sorted(list(range(10)) * 2)


def stored(dataset, column: str) -> np.ndarray:
    """A column of stored images (before the transform) as one array."""
    return np.stack([np.asarray(image) for image in dataset[column]])


def test_mosaic_splits_depend_on_the_seed_only():
    options = ImageSegmentationArguments(mosaic_images=12, mosaic_size=23, mosaic_digits=2)
    first, second, other = (mosaic_splits(options, 0.25, seed) for seed in (1, 1, 2))
    for split in ("train", "validation"):
        images, label_maps = stored(first[split], "pixel_values"), stored(first[split], "labels")
        np.testing.assert_array_equal(images, stored(second[split], "pixel_values"))
        np.testing.assert_array_equal(label_maps, stored(second[split], "labels"))
        assert not np.array_equal(images, stored(other[split], "pixel_values"))
        assert images.dtype == np.uint8 and label_maps.max() <= 10
        # ink (grey level >= 8 of 16, so >= 128 of 255 once scaled) is where the labels are
        np.testing.assert_array_equal(label_maps > 0, images >= np.rint(INK_THRESHOLD * 255 / 16))


def test_mask_resizing_keeps_class_ids():
    mask = np.random.default_rng(0).choice([0, 3, 7, 255, 300], size=(5, 7))
    upscaled = resize_mask(mask, (15, 21))
    assert upscaled.dtype == torch.int64
    np.testing.assert_array_equal(upscaled.numpy(), np.kron(mask, np.ones((3, 3), dtype=int)))
    # downscaled by 2 (nearest pixel centre): pixel i takes source pixel 2i + 1
    mask = np.random.default_rng(1).choice([0, 1, 2, 255], size=(10, 14))
    np.testing.assert_array_equal(resize_mask(mask, (5, 7)).numpy(), mask[1::2, 1::2])
    assert set(resize_mask(mask, (7, 9)).unique().tolist()) <= {0, 1, 2, 255}


def test_image_and_mask_folders(assets, tmp_path):
    data, processor = loaded_data(folder_argv(assets.train, tmp_path / "o", "--validation_dir", str(assets.validation)))
    assert data.label_names == [f"LABEL_{i}" for i in MASK_IDS] and data.dataset_label == "train"
    assert (len(data.train), len(data.evaluation)) == (6, 3)
    row = data.train[0]
    mask = np.asarray(Image.open(assets.train / "masks" / "pair0.png"))
    image = Image.open(assets.train / "images" / "pair0.png").convert("L")
    assert row["pixel_values"].shape == (1, 12, 12) and row["labels"].shape == (12, 12)
    torch.testing.assert_close(row["pixel_values"], processor(images=[image], return_tensors="pt")["pixel_values"][0])
    np.testing.assert_array_equal(row["labels"].numpy(), resize_mask(mask, (12, 12)).numpy())
    assert (row["labels"] == 255).any()

    # reduce_labels: 0 becomes ignored, the other ids move down; class names from a JSON file
    names_file = tmp_path / "id2label.json"
    names_file.write_text(json.dumps({"0": "cat", "1": "dog", "2": "bird"}))
    reduced, _ = loaded_data(
        folder_argv(
            assets.train, tmp_path / "r", "--validation_dir", str(assets.validation), "--reduce_labels",
            "--id2label_file", str(names_file),
        )
    )  # fmt: skip
    assert reduced.label_names == ["cat", "dog", "bird"]
    expected = np.where((mask == 0) | (mask == 255), 255, mask.astype(int) - 1)
    np.testing.assert_array_equal(reduced.train[0]["labels"].numpy(), resize_mask(expected, (12, 12)).numpy())

    # without --validation_dir: a seeded share of the training folder, each file on one side
    split, _ = loaded_data(folder_argv(assets.train, tmp_path / "s", "--validation_split_fraction", "0.5"))
    train = {row["labels"].numpy().tobytes() for row in split.train}
    evaluation = {row["labels"].numpy().tobytes() for row in split.evaluation}
    assert len(train) == len(evaluation) == 3 and not train & evaluation


def test_parquet_files_with_image_and_mask_columns(assets, tmp_path):
    """The path of files and Hub datasets: image and mask columns (here the image and annotation columns of a
    parquet file, as datasets writes images), checked row by row."""
    pairs = sorted((assets.train / "images").iterdir())
    rows = {
        "image": [Image.open(path) for path in pairs],
        "annotation": [Image.open(assets.train / "masks" / path.name) for path in pairs],
    }
    features = Features(image=ImageFeature(), annotation=ImageFeature())
    Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "pairs.parquet")
    argv = [
        "--task", "image-segmentation",
        "--train_file", str(tmp_path / "pairs.parquet"),
        "--label_column", "annotation",
        "--validation_split_fraction", "0.5",
        "--architecture", json.dumps(TINY_SEGMENTATION_VIT),
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    data, _ = loaded_data(argv)
    assert data.label_names == [f"LABEL_{i}" for i in MASK_IDS] and data.dataset_label == "pairs"
    assert (len(data.train), len(data.evaluation)) == (3, 3)
    expected = {resize_mask(np.array(mask), (12, 12)).numpy().tobytes() for mask in rows["annotation"]}
    found = {row["labels"].numpy().tobytes() for split in (data.train, data.evaluation) for row in split}
    assert found == expected

    rows["annotation"][2] = rows["annotation"][2].crop((0, 0, IMAGE_WIDTH, IMAGE_HEIGHT - 1))
    Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(SystemExit, match=r"the mask of (train|validation) row \d is 11×8 pixels but the image of"):
        loaded_data(argv)


def test_metrics_equal_a_confusion_matrix_computation():
    rng = np.random.default_rng(0)
    references = rng.choice([0, 1, 2, 4, 255], size=(6, 7, 9))  # class 3 never occurs, class 5 only predicted
    predictions = np.where(rng.random(references.shape) < 0.6, references, rng.integers(0, 6, references.shape))
    predictions[predictions == 255] = 0
    task = image_segmentation.ImageSegmentation()
    data = SimpleNamespace(label_names=[str(i) for i in range(6)], metric_inputs=255)
    scores = task.compute_metrics(data)(EvalPrediction(predictions=predictions, label_ids=references))
    assert scores == pytest.approx(confusion_scores(confusion_matrix(predictions, references, 6, 255)), rel=1e-12)
    logits = torch.randn(2, 6, 4, 5)
    torch.testing.assert_close(task.preprocess_logits_for_metrics()(logits, None), logits.argmax(dim=1))


def test_end_to_end_run_export_and_pipeline(tmp_path, capsys):
    output_dir = tmp_path / "seg"
    metrics = main(mosaic_argv(output_dir, "--correction", "centered"))
    assert {"eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy"} <= set(metrics)
    assert "eval mean IoU" in capsys.readouterr().out
    config = json.loads((output_dir / "config.json").read_text())
    assert config["architectures"] == ["CenteredViTForSemanticSegmentation"]
    assert config["id2label"] == {"0": "background", **{str(d + 1): str(d) for d in range(10)}}
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and "type: mean_iou" in card
    assert f"value: {metrics['eval_mean_iou']}" in card

    # the reported metrics are those of the exported model's predictions, counted in a confusion matrix
    model = AutoModelForSemanticSegmentation.from_pretrained(output_dir).eval()
    data, _ = loaded_data(mosaic_argv(tmp_path / "again"))
    counts = np.zeros((11, 11), dtype=np.int64)
    for start in range(0, len(data.evaluation), 8):
        batch = data.evaluation[start : start + 8]
        with torch.no_grad():
            predicted = model(pixel_values=batch["pixel_values"]).logits.argmax(dim=1)
        counts += confusion_matrix(predicted.numpy(), batch["labels"].numpy(), 11, 255)
    assert counts.sum() == len(data.evaluation) * 12 * 12
    expected = confusion_scores(counts)
    assert {name: metrics[f"eval_{name}"] for name in expected} == pytest.approx(expected, rel=1e-9)

    segmenter = pipeline("image-segmentation", model=str(output_dir), trust_remote_code=True)
    mosaic = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(23, 29, 3), dtype=np.uint8))
    segments = segmenter(mosaic)
    assert segments and {segment["label"] for segment in segments} <= set(config["id2label"].values())
    assert all(segment["mask"].size == (29, 23) and segment["mask"].mode == "L" for segment in segments)
    coverage = sum(np.asarray(segment["mask"]) // 255 for segment in segments)
    assert (coverage == 1).all()  # every pixel in exactly one class
    assert isinstance(AutoImageProcessor.from_pretrained(output_dir), type(segmenter.image_processor))


def test_lora_and_the_stock_baseline(assets, tmp_path, capsys):
    output_dir = tmp_path / "lora"
    argv = mosaic_argv(output_dir, "--model_name_or_path", str(assets.vit), "--use_lora", "--merge_lora")
    argv = [token for token in argv if token != "--no_baseline"]
    architecture = argv.index("--architecture")
    del argv[architecture : architecture + 2]
    main([*argv, "--correction", "centered"])
    printed = capsys.readouterr().out
    assert "mean IoU" in printed and "stock, same setup" in printed
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert "decode_head" in adapter_config["modules_to_save"]
    for folder in (output_dir, output_dir / finetuning.BASELINE_DIR):
        assert "pipeline_tag: image-segmentation" in (folder / "README.md").read_text()
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["CenteredViTForSemanticSegmentation"]


def bad_folder(assets, tmp_path: Path, change: str) -> Path:
    """A copy of the training folder with one thing wrong."""
    folder = tmp_path / "bad"
    shutil.copytree(assets.train, folder)
    if change == "mask_size":
        Image.fromarray(np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH - 1), dtype=np.uint8)).save(folder / "masks" / "pair2.png")
    elif change == "image_without_mask":
        (folder / "masks" / "pair4.png").unlink()
    elif change == "rgb_mask":
        Image.open(folder / "masks" / "pair1.png").convert("RGB").save(folder / "masks" / "pair1.png")
    elif change == "no_masks_folder":
        shutil.rmtree(folder / "masks")
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("mask_size", r"bad/masks/pair2\.png is 10×9 pixels but .*bad/images/pair2\.png is 11×9; a mask must have its"),
        ("class_id_too_large", r"masks/pair\d\.png holds class id\(s\) \[3\] outside 0\.\.2 \(num_labels=3\)"),
        ("image_without_mask", r"1 of the images in .*bad have no file of the same stem in .*masks \(pair4\.png\)"),
        ("rgb_mask", r"masks/pair1\.png has PIL mode RGB; a mask is a single-channel image of class ids"),
        ("no_masks_folder", r"--train_dir .*bad has no masks/ folder; it must hold images/ and masks/"),
        ("id2label_too_short", r"holds class id\(s\) \[2, 3\] outside 0\.\.1 \(num_labels=2\)"),
        (
            "bert_checkpoint",  # names the image families with a segmentation head
            r"tiny_bert is a text model; --task image-segmentation needs an image model \(vit\)",
        ),
        (
            "too_many_digits",
            r"mosaic_digits=17 digits do not fit on a 32×32 canvas: its 4×4 cells of 8 pixels .* at most 16",
        ),
        ("mosaic_option_with_folder", r"--mosaic_size applies to the built-in digit_mosaics only, not to --train_dir"),
        ("option_of_another_task", r"--mosaic_digits is an option of --task image-segmentation, not of --task image-c"),
    ],
)
def test_bad_input_fails_before_training(assets, tmp_path, monkeypatch, case, message):
    def training_must_not_start(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(Trainer, "train", training_must_not_start)
    output_dir = tmp_path / "out"
    if case in ("mask_size", "image_without_mask", "rgb_mask", "no_masks_folder"):
        argv = folder_argv(bad_folder(assets, tmp_path, case), output_dir)
    elif case == "class_id_too_large":
        argv = folder_argv(assets.train, output_dir, "--num_labels", "3")
    elif case == "id2label_too_short":
        names_file = tmp_path / "names.json"
        names_file.write_text(json.dumps(["background", "thing"]))
        argv = folder_argv(assets.train, output_dir, "--id2label_file", str(names_file))
    elif case == "bert_checkpoint":
        argv = mosaic_argv(output_dir, "--model_name_or_path", str(assets.root / "tiny_bert"))
        del argv[argv.index("--architecture") : argv.index("--architecture") + 2]
    elif case == "too_many_digits":
        argv = mosaic_argv(output_dir, "--mosaic_size", "32", "--mosaic_digits", "17")
    elif case == "mosaic_option_with_folder":
        argv = folder_argv(assets.train, output_dir, "--mosaic_size", "40")
    else:
        argv = ["--task", "image-classification", "--dataset_name", "digits", "--mosaic_digits", "2"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert len(str(exit_info.value).splitlines()) == 1
    assert re.search(message, str(exit_info.value)), str(exit_info.value)
    assert not output_dir.exists()
