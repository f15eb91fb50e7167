"""Building a multimodal processor without torchvision (images only).

    processor = load_image_only_processor(ImageOnlyInternVLProcessor, "OpenGVLab/InternVL3-1B-hf")
"""
from __future__ import annotations


class ImageOnlyProcessorMixin:
    """Lets a multimodal processor be built with video_processor=None: transformers' video processors
    need torchvision, which this project does not install (images only, exactly as with video)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def load_image_only_processor(processor_class, id_or_path: str, **kwargs):
    """`AutoProcessor.from_pretrained`, or, when that fails for want of torchvision (the video
    processor), `processor_class` (an `ImageOnlyProcessorMixin` subclass) from the checkpoint's
    tokenizer, image processor (PIL backend) and processor settings."""
    import importlib.util
    import inspect

    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if importlib.util.find_spec("torchvision") is not None:  # else AutoProcessor loads the tokenizer, then fails
        try:
            return AutoProcessor.from_pretrained(id_or_path, **kwargs)
        except (ImportError, ValueError) as error:
            if "torchvision" not in str(error).lower():
                raise
    tokenizer = AutoTokenizer.from_pretrained(id_or_path, **kwargs)
    image_processor = AutoImageProcessor.from_pretrained(id_or_path, **kwargs)
    try:
        settings, _ = processor_class.get_processor_dict(id_or_path, **kwargs)
    except OSError:
        settings = {}
    accepted = set(inspect.signature(processor_class.__init__).parameters) - {
        "self", "image_processor", "tokenizer", "video_processor", "kwargs"
    }
    extra = {key: value for key, value in settings.items() if key in accepted}
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **extra)
