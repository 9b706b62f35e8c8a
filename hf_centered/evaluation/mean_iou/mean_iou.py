"""`mean_iou`: intersection over union of segmentation maps per class and averaged, as the Hub's metric of the same id.

Shipped with hf_centered so that it loads offline by path (`hf_centered.metrics.load_metric("mean_iou")`). Keyword
arguments and output are the Hub metric's (`num_labels`, `ignore_index`, `nan_to_num`, `label_map`,
`reduce_labels`; `mean_iou`, `mean_accuracy`, `overall_accuracy`, `per_category_iou`, `per_category_accuracy`), and
so is the arithmetic: pixel counts are summed over all maps before dividing, pixels whose reference is `ignore_index`
are dropped, values outside [0, num_labels) count for no class, a class absent from both predictions and references
has a NaN IoU (a class absent from the references a NaN accuracy) that the means skip. One difference: the maps are
integer arrays stored as nested lists rather than images, so label ids are not limited to 8 bits and no PNG encoding
is paid per map.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
The IoU of a class is the number of pixels where prediction and reference both have it, divided by the number of
pixels where either has it; the mean IoU averages it over the classes present in either. Accuracy of a class is the
fraction of its reference pixels predicted right; overall accuracy the fraction of all (non-ignored) pixels.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D integer arrays): predicted segmentation maps, each (height, width); sizes may differ
        between maps but not between a prediction and its reference.
    references (`list` of 2-D integer arrays): reference segmentation maps.
    num_labels (`int`): the number of classes.
    ignore_index (`int`): the reference value of pixels left out of the evaluation (e.g. 255).
    nan_to_num (`int`, *optional*): replaces every NaN of the results.
    label_map (`dict`, *optional*): maps reference label ids to new ones (all looked up on the original ids).
    reduce_labels (`bool`, defaults to False): whether to subtract 1 from every reference label and turn 0
        (background) into 255, for datasets whose background is not a class.

Returns:
    mean_iou (`float`): IoU averaged over the classes with a defined IoU.
    mean_accuracy (`float`): accuracy averaged over the classes present in the references.
    overall_accuracy (`float`): the fraction of non-ignored pixels predicted right.
    per_category_iou (`ndarray` of shape (num_labels,)): the IoU of each class, NaN if absent from both.
    per_category_accuracy (`ndarray` of shape (num_labels,)): the accuracy of each class, NaN if not in the references.

Examples:
    >>> mean_iou = evaluate.load("hf_centered/evaluation/mean_iou")
    >>> results = mean_iou.compute(
    ...     predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 1], [0, 255]])],
    ...     num_labels=2, ignore_index=255,
    ... )
    >>> results["mean_iou"], results["overall_accuracy"]
    (0.5, 0.6666666666666666)
"""

_CITATION = """
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
  author = {{MMSegmentation Contributors}},
  license = {Apache-2.0},
  month = {7},
  title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
  url = {https://github.com/open-mmlab/mmsegmentation},
  year = {2020}
}
"""


def class_pixel_counts(label_ids: np.ndarray, num_labels: int) -> np.ndarray:
    """How many of `label_ids` belong to each class; ids outside [0, num_labels) belong to none."""
    label_ids = label_ids[(label_ids >= 0) & (label_ids < num_labels)]
    return np.bincount(label_ids, minlength=num_labels).astype(np.float64)


def mean_of_defined(values: np.ndarray) -> float:
    """The mean of the non-NaN `values`; NaN (without numpy's empty-slice warning) when there are none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def relabel_reference(reference: np.ndarray, label_map: dict[int, int] | None, reduce_labels: bool) -> np.ndarray:
    """The reference map after `label_map` (looked up on the original ids) and then `reduce_labels`."""
    relabelled = reference.copy()
    if label_map is not None:
        for old_id, new_id in label_map.items():
            relabelled[reference == old_id] = new_id
    if reduce_labels:
        # Background 0 becomes 255 and every class moves down by one; 255 stays 255 (it would become 254).
        background, was_ignored = relabelled == 0, relabelled == 255
        relabelled = relabelled - 1
        relabelled[background | was_ignored] = 255
    return relabelled


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIou(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        segmentation_map = datasets.List(datasets.List(datasets.Value("int64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": segmentation_map, "references": segmentation_map}),
            reference_urls=[
                "https://github.com/open-mmlab/mmsegmentation/blob/71c201b1813267d78764f306a297ca717827c4bf/mmseg/core/evaluation/metrics.py"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num: int | None = None,
        label_map: dict[int, int] | None = None,
        reduce_labels: bool = False,
    ) -> dict:
        intersection = np.zeros(num_labels)
        predicted_area = np.zeros(num_labels)
        reference_area = np.zeros(num_labels)
        for prediction, reference in zip(predictions, references, strict=True):
            prediction = np.asarray(prediction, dtype=np.int64)
            reference = relabel_reference(np.asarray(reference, dtype=np.int64), label_map, reduce_labels)
            if prediction.shape != reference.shape:
                raise ValueError(f"a prediction of shape {prediction.shape} has a reference of shape {reference.shape}")
            evaluated = reference != ignore_index
            prediction, reference = prediction[evaluated], reference[evaluated]
            intersection += class_pixel_counts(prediction[prediction == reference], num_labels)
            predicted_area += class_pixel_counts(prediction, num_labels)
            reference_area += class_pixel_counts(reference, num_labels)
        union = predicted_area + reference_area - intersection
        # 0/0 is the NaN of a class absent from both (or from the references): expected, and skipped by the means.
        with np.errstate(divide="ignore", invalid="ignore"):
            per_category_iou = intersection / union
            per_category_accuracy = intersection / reference_area
            overall_accuracy = intersection.sum() / reference_area.sum()
        results = {
            "mean_iou": mean_of_defined(per_category_iou),
            "mean_accuracy": mean_of_defined(per_category_accuracy),
            "overall_accuracy": float(overall_accuracy),
            "per_category_iou": per_category_iou,
            "per_category_accuracy": per_category_accuracy,
        }
        if nan_to_num is not None:
            results = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in results.items()}
        return results
