"""The basic filters every dataset needs (DataComp's "basic filter"): image size and caption length.

Both are CurationStages: a dropped image becomes a FilterRecord with the measured value as its score
and the limit it broke as its threshold, counted per stage in `_stats.json`.
"""

from __future__ import annotations

from beam_curator.tasks import ImageObject
from beam_curator.transforms.stages.kit import CurationStage, Dropped

__all__ = ["CaptionFilterStage", "ImageSizeFilterStage"]


def _check_limit(name: str, value, *, integer: bool, minimum: float) -> None:
    if value is None:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} >= {minimum} or None, "
                         f"got {value!r}")


def _require_one(stage: str, limits: dict) -> None:
    if all(value is None for value in limits.values()):
        raise ValueError(f"{stage} needs at least one of {', '.join(limits)}")


class _RuleFilter(CurationStage):
    """Drops an image when reasons(image) gives (reason, measured value, limit); an image reasons
    raises on fails alone."""

    needs = ()  # sizes and captions: no pixels

    def reasons(self, obj: ImageObject) -> tuple | None:
        raise NotImplementedError

    def judge(self, image: ImageObject) -> ImageObject | Dropped:
        why = self.reasons(image)
        return image if why is None else Dropped(image, *why)


class ImageSizeFilterStage(_RuleFilter):
    """Keeps images whose shortest side is >= min_size, whose max(w, h) / min(w, h) is <=
    max_aspect_ratio and whose width x height is <= max_pixels (None: that limit is not checked).
    The size is the decoded one; an image without it fails alone."""

    def __init__(self, min_size: int | None = None, max_aspect_ratio: float | None = None,
                 max_pixels: int | None = None, *, name: str = "image_size_filter"):
        super().__init__(name=name)
        _check_limit("min_size", min_size, integer=True, minimum=1)
        _check_limit("max_aspect_ratio", max_aspect_ratio, integer=False, minimum=1)
        _check_limit("max_pixels", max_pixels, integer=True, minimum=1)
        _require_one(type(self).__name__, {"min_size": min_size, "max_aspect_ratio": max_aspect_ratio,
                                           "max_pixels": max_pixels})
        self.min_size, self.max_aspect_ratio, self.max_pixels = min_size, max_aspect_ratio, max_pixels

    def why_not(self, width: int, height: int) -> tuple[str, float, float] | None:
        """(reason, measured value, limit) when an image of that size is dropped, else None."""
        shortest, longest = min(width, height), max(width, height)
        if self.min_size is not None and shortest < self.min_size:
            return f"shortest side {shortest} px < min_size {self.min_size}", shortest, self.min_size
        if self.max_aspect_ratio is not None and longest / shortest > self.max_aspect_ratio:
            return (f"aspect ratio {longest / shortest:.3g} > max_aspect_ratio {self.max_aspect_ratio:g}",
                    longest / shortest, self.max_aspect_ratio)
        if self.max_pixels is not None and width * height > self.max_pixels:
            return f"{width * height} pixels > max_pixels {self.max_pixels}", width * height, self.max_pixels
        return None

    def reasons(self, obj: ImageObject) -> tuple[str, float, float] | None:
        size = _size(obj)
        if size is None:
            raise ValueError("the image's size is unknown (not decoded)")
        return self.why_not(*size)

    def display_data(self):
        return {"name": self.stage_name, "min_size": str(self.min_size), "max_aspect_ratio": str(self.max_aspect_ratio),
                "max_pixels": str(self.max_pixels)}


def _size(obj: ImageObject) -> tuple[int, int] | None:
    if obj.width and obj.height:
        return obj.width, obj.height
    if obj.image_data is not None:
        return int(obj.image_data.shape[1]), int(obj.image_data.shape[0])
    return None


class CaptionFilterStage(_RuleFilter):
    """Keeps images whose `.txt` caption has >= min_words words (split on whitespace) and between
    min_chars and max_chars characters (stripped). A sample without a caption is dropped by min_words
    and min_chars, kept by max_chars alone."""

    def __init__(self, min_words: int | None = None, min_chars: int | None = None, max_chars: int | None = None,
                 *, name: str = "caption_filter"):
        super().__init__(name=name)
        for option, value in (("min_words", min_words), ("min_chars", min_chars), ("max_chars", max_chars)):
            _check_limit(option, value, integer=True, minimum=0)
        _require_one(type(self).__name__, {"min_words": min_words, "min_chars": min_chars, "max_chars": max_chars})
        if min_chars is not None and max_chars is not None and min_chars > max_chars:
            raise ValueError(f"min_chars {min_chars} is more than max_chars {max_chars}")
        self.min_words, self.min_chars, self.max_chars = min_words, min_chars, max_chars

    def why_not(self, caption: str | None) -> tuple[str, float | None, float | None] | None:
        """(reason, measured value, limit) when an image with that caption is dropped, else None."""
        if caption is None:
            if self.min_words is not None or self.min_chars is not None:
                return "the sample has no caption (.txt)", None, self.min_words if self.min_words is not None \
                    else self.min_chars
            return None
        words, chars = len(caption.split()), len(caption.strip())
        if self.min_words is not None and words < self.min_words:
            return f"{words} words < min_words {self.min_words}", words, self.min_words
        if self.min_chars is not None and chars < self.min_chars:
            return f"{chars} characters < min_chars {self.min_chars}", chars, self.min_chars
        if self.max_chars is not None and chars > self.max_chars:
            return f"{chars} characters > max_chars {self.max_chars}", chars, self.max_chars
        return None

    def reasons(self, obj: ImageObject) -> tuple[str, float | None, float | None] | None:
        return self.why_not(obj.caption)

    def display_data(self):
        return {"name": self.stage_name, "min_words": str(self.min_words), "min_chars": str(self.min_chars),
                "max_chars": str(self.max_chars)}
