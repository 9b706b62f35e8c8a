"""The ViT image processor with the model's number of channels, so that grey-level models take any image, and the
post-processing of segmentation maps.

The image-classification pipeline hands every PIL image over as RGB (`transformers.image_utils.load_image`), and the
stock processors keep the channels they are given, so a 1-channel model (e.g. one trained on the digits) received 3.
The image-segmentation pipeline turns a model's logits into label maps through the processor's
`post_process_semantic_segmentation`, which the stock ViT processors lack (stock ViT has no segmentation head).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import ViTImageProcessorPil
from transformers.image_utils import ImageInput
from transformers.processing_utils import ImagesKwargs, Unpack

# ITU-R 601-2 luma, the weights of PIL's "L" conversion; an alpha channel is ignored, as PIL does.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class CenteredViTImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    num_channels (`int`, *optional*, defaults to `self.num_channels`):
        The model's input channels: 1 turns colour images into grey levels (ITU-R 601-2 luma, as PIL's "L" mode),
        3 repeats a grey image over the three channels.
    """

    num_channels: int


class CenteredViTImageProcessor(ViTImageProcessorPil):
    """[`ViTImageProcessorPil`] that also converts each image to the model's `num_channels` (1 or 3), before it is
    resized, rescaled and normalised; other channel counts are left as they are."""

    valid_kwargs = CenteredViTImageProcessorKwargs
    num_channels = 3

    def __init__(self, **kwargs: Unpack[CenteredViTImageProcessorKwargs]):
        super().__init__(**kwargs)

    def process_image(self, image: ImageInput, *args, num_channels: int = 3, **kwargs) -> ImageInput:
        """The backend's channels-first array, with `num_channels` channels."""
        image = super().process_image(image, *args, **kwargs)
        if num_channels == 1 and image.shape[0] in (3, 4):
            red, green, blue = image[:3].astype("float64")
            grey = LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue
            if image.dtype.kind in "ui":  # integer (8-bit) images stay integer, rounded as PIL rounds
                grey = grey.round()
            return grey.astype(image.dtype)[None]
        if num_channels == 3 and image.shape[0] == 1:
            return image.repeat(3, axis=0)
        return image

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: list[tuple[int, int]] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The label map `(height, width)` of each image: the argmax over classes of `outputs.logits`
        `(batch, num_labels, H, W)` (a `CenteredViTForSemanticSegmentation` output), whose logits are first resized
        bilinearly to `target_sizes[i]` `(height, width)` when given (the image-segmentation pipeline passes each
        original image's size), as Segformer's processor does."""
        logits = outputs.logits
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(f"target_sizes has {len(target_sizes)} sizes for a batch of {len(logits)} images.")
        label_maps = []
        for image_logits, (height, width) in zip(logits, target_sizes, strict=True):
            resized = F.interpolate(image_logits[None], size=(int(height), int(width)), mode="bilinear")
            label_maps.append(resized[0].argmax(dim=0))
        return label_maps


__all__ = ["CenteredViTImageProcessor"]
