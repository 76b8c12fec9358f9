import numpy as np
import pytest

from beam_curator.formats.decoding import DaliImageDecoder, ImageDecodeError, _jpeg_size, decode_with_pillow, probe_size
from tests.support.helpers import encode, make_image, pixels_of


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
    results = pixels_of(decoder.decode(images))
    assert decoder.device == "cpu" and len(results) == 6
    for result in results[:4] + results[5:]:
        np.testing.assert_array_equal(result, pixels)  # lossless formats decode exactly
    assert results[4].shape == (30, 40, 3) and results[4].dtype == np.uint8
    # JPEG decoders may differ in chroma upsampling: compare with Pillow's decode of the same bytes.
    assert np.abs(results[4].astype(int) - decode_with_pillow(images[4])).mean() < 2


def test_grayscale_and_rgba_come_out_rgb(decoder):
    gray = encode(make_image(2)[..., 0], "PNG")
    rgba = encode(np.dstack([make_image(3), np.full((64, 96), 128, np.uint8)]), "PNG")
    for result in pixels_of(decoder.decode([gray, rgba])):
        assert result.shape == (64, 96, 3)


def test_bad_image_fails_alone_and_gif_falls_back_to_pillow(decoder):
    pixels = make_image(4, 32, 24)
    good = encode(pixels, "PNG")
    gif = encode(pixels, "GIF")
    results = pixels_of(decoder.decode([good, b"not an image at all", b"", gif, good]))
    np.testing.assert_array_equal(results[0], pixels)
    assert isinstance(results[1], ImageDecodeError) and isinstance(results[2], ImageDecodeError)
    assert results[3].shape == (24, 32, 3)
    np.testing.assert_array_equal(results[4], pixels)


def test_results_outlive_later_runs(decoder):
    import gc

    first = pixels_of(decoder.decode([encode(make_image(5 + i), "PNG") for i in range(4)]))
    expected = [make_image(5 + i) for i in range(4)]
    gc.collect()
    for round_index in range(6):  # DALI must not reuse the buffers the first results still view
        decoder.decode([encode(make_image(50 + round_index * 4 + i), "PNG") for i in range(4)])
    for got, want in zip(first, expected):
        np.testing.assert_array_equal(got, want)


def test_submitted_batches_decode_in_the_background_in_order(decoder):
    batches = [[encode(make_image(100 + 3 * b + i), "PNG") for i in range(3)] for b in range(4)]
    batches[2][1] = b"broken"  # a failing batch in the queue does not disturb the others
    futures = [decoder.submit(images) for images in batches]  # all queued before any result is taken
    for b, future in enumerate(futures):
        results = pixels_of(future.result(timeout=60))
        for i, result in enumerate(results):
            if (b, i) == (2, 1):
                assert isinstance(result, ImageDecodeError)
            else:
                np.testing.assert_array_equal(result, make_image(100 + 3 * b + i))


def test_each_submitted_batch_counts_its_own_pillow_decodes(decoder):
    """The count travels with the batch's results: taken from the decoder after the first result, it
    would hold the second batch's GIF when both are done by then (several DoFn threads share a decoder)."""
    plain = [encode(make_image(5), "PNG")]
    with_gif = [encode(make_image(6), "GIF"), encode(make_image(7), "PNG")]
    first, second = decoder.submit(plain), decoder.submit(with_gif)
    second.result(timeout=60)  # both done before the first is looked at
    assert (first.result().pillow, second.result().pillow) == (0, 1)
    assert second.result()[0].pixels.shape == make_image(6).shape


def _jpegs():
    import io

    from PIL import Image

    pixels = make_image(7, 123, 45)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the frame header still holds the stored size, as Pillow reports
    variants = {
        "baseline": {}, "progressive": {"progressive": True}, "optimized": {"optimize": True},
        "exif": {"exif": exif.tobytes()}, "icc": {"icc_profile": b"\0" * 3000}, "comment": {"comment": b"hi"},
    }
    for label, options in variants.items():
        yield label, encode(pixels, "JPEG", **options)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0]).save(buffer, format="JPEG")
    yield "grayscale", buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buffer, format="JPEG")
    yield "cmyk", buffer.getvalue()


@pytest.mark.parametrize("label,data", list(_jpegs()))
def test_jpeg_size_from_the_frame_header_equals_pillows(label, data):
    import io

    from PIL import Image

    assert _jpeg_size(data) == Image.open(io.BytesIO(data)).size == (123, 45)


def test_jpeg_size_leaves_odd_input_to_pillow():
    good = encode(make_image(8, 40, 30), "JPEG")
    start_of_scan = good.index(b"\xff\xda")
    for odd in [b"", b"\xff\xd8", b"\xff\xd8\xff", good[:20], good[:start_of_scan].replace(b"\xff\xc0", b"\xff\xfe")[:30],
                b"\xff\xd8\xff\xda" + good[4:], encode(make_image(8, 40, 30), "PNG")]:
        assert _jpeg_size(odd) is None
    assert probe_size(encode(make_image(8, 40, 30), "PNG")) == (40, 30)  # Pillow's answer
    assert probe_size(good) == (40, 30)


def test_pillow_decoder_error_is_typed():
    with pytest.raises(ImageDecodeError, match="UnidentifiedImageError"):
        decode_with_pillow(b"junk")


@pytest.mark.gpu
def test_gpu_pipeline_decodes_on_the_device():
    decoder = DaliImageDecoder(batch_size=2, num_threads=2, use_gpu=True)
    pixels = make_image(7)
    (result,) = pixels_of(decoder.decode([encode(pixels, "PNG")]))
    assert decoder.device == "mixed"
    np.testing.assert_array_equal(result, pixels)
