"""The ViT image processor with the model's number of channels, so that grey-level models take any image.

The image-classification pipeline hands every PIL image over as RGB (`transformers.image_utils.load_image`), and the
stock processors keep the channels they are given, so a 1-channel model (e.g. one trained on the digits) received 3.
"""

from __future__ import annotations

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


__all__ = ["CenteredViTImageProcessor"]
