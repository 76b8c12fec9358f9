import numpy as np
import pytest

from beam_curator.decoding import DaliImageDecoder, ImageDecodeError, decode_with_pillow
from tests.helpers import encode, make_image


@pytest.fixture(scope="module")
def decoder():
    return DaliImageDecoder(batch_size=4, num_threads=2, use_gpu=False)


def test_cpu_pipeline_decodes_many_formats_to_rgb(decoder):
    pixels = make_image(1, 40, 30)
    images = [
        encode(pixels, "PNG"),
        encode(pixels, "BMP"),
        encode(pixels, "TIFF"),
        encode(pixels, "WEBP", lossless=True),
        encode(pixels, "JPEG", quality=95),
        encode(pixels, "PNG"),
    ]
    results = decoder.decode(images)
    assert decoder.device == "cpu" and len(results) == 6
    for result in results[:4] + results[5:]:
        np.testing.assert_array_equal(result, pixels)  # lossless formats decode exactly
    assert results[4].shape == (30, 40, 3) and results[4].dtype == np.uint8
    # JPEG decoders may differ in chroma upsampling: compare with Pillow's decode of the same bytes.
    assert np.abs(results[4].astype(int) - decode_with_pillow(images[4])).mean() < 2


def test_grayscale_and_rgba_come_out_rgb(decoder):
    gray = encode(make_image(2)[..., 0], "PNG")
    rgba = encode(np.dstack([make_image(3), np.full((64, 96), 128, np.uint8)]), "PNG")
    for result in decoder.decode([gray, rgba]):
        assert result.shape == (64, 96, 3)


def test_bad_image_fails_alone_and_gif_falls_back_to_pillow(decoder):
    pixels = make_image(4, 32, 24)
    good = encode(pixels, "PNG")
    gif = encode(pixels, "GIF")
    results = decoder.decode([good, b"not an image at all", b"", gif, good])
    np.testing.assert_array_equal(results[0], pixels)
    assert isinstance(results[1], ImageDecodeError) and isinstance(results[2], ImageDecodeError)
    assert results[3].shape == (24, 32, 3)
    np.testing.assert_array_equal(results[4], pixels)


def test_results_are_copies_not_dali_buffers(decoder):
    first = decoder.decode([encode(make_image(5), "PNG")])[0]
    snapshot = first.copy()
    decoder.decode([encode(make_image(6), "PNG")])
    np.testing.assert_array_equal(first, snapshot)


def test_pillow_decoder_error_is_typed():
    with pytest.raises(ImageDecodeError, match="UnidentifiedImageError"):
        decode_with_pillow(b"junk")


@pytest.mark.gpu
def test_gpu_pipeline_decodes_on_the_device():
    decoder = DaliImageDecoder(batch_size=2, num_threads=2, use_gpu=True)
    pixels = make_image(7)
    (result,) = decoder.decode([encode(pixels, "PNG")])
    assert decoder.device == "mixed"
    np.testing.assert_array_equal(result, pixels)
