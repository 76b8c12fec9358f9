"""The model input made in the decoding pipeline (beam_curator.formats.model_input) against Hugging Face's
CLIP processor on real photographs (scikit-image's), and the IO-binding path that feeds it to ONNX Runtime.

The CLIP is a tiny random one at CLIP's real input size (224 px), exported through the real export path;
a trained CLIP's sensitivity to the drift may differ somewhat (docs/PERFORMANCE.md records the figures).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from beam_curator.formats.decoding import DaliImageDecoder, Decoded, DecodeOutputs
from beam_curator.formats.model_input import ModelInput, clip_pixels
from beam_curator.models.inference import OnnxModel
from beam_curator.models.model_dir import read_manifest

pytest.importorskip("torch")
pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")

# A tiny CLIP that takes 224 px images, as every real CLIP does.
TINY_224 = {"vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
            "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
            "projection_dim": 64, "image_size": 224}
# (width, height): landscape, portrait, a panorama, smaller than the crop, the crop's own size.
SIZES = [(640, 480), (480, 640), (1000, 250), (800, 533), (300, 224), (224, 224), (200, 150), (150, 100)]
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"]


def photos() -> list[bytes]:
    """Natural photographs at the sizes above, JPEG quality 90."""
    from PIL import Image

    encoded = []
    for index, name in enumerate(PHOTOS):
        image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
        for size in SIZES[index % 3::2]:
            buffer = io.BytesIO()
            image.resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=90)
            encoded.append(buffer.getvalue())
    return encoded


@pytest.fixture(scope="module")
def clip224(tmp_path_factory):
    from beam_curator.models.tiny import export_tiny_models, make_clip_checkpoint

    root = tmp_path_factory.mktemp("clip224")
    export_tiny_models(str(root / "exported"), sizes=TINY_224)
    clip_dir = make_clip_checkpoint(str(root / "clip"), sizes=TINY_224)
    manifest = read_manifest(str(root / "exported"))
    image_encoder = os.path.join(manifest.model_dir, manifest.files["image_encoder"]["path"])
    return manifest, clip_dir, OnnxModel(image_encoder, use_gpu=False)


def _decode(encoded: list[bytes], spec: ModelInput) -> list[Decoded]:
    decoder = DaliImageDecoder(batch_size=8, num_threads=2, use_gpu=False, outputs=DecodeOutputs(model_input=spec))
    results = decoder.decode(encoded)
    assert all(isinstance(result, Decoded) for result in results)
    return results


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_dali_preprocessing_drifts_within_the_targets(clip224):
    from beam_curator.models.tiny import _processor_class

    manifest, clip_dir, model = clip224
    spec = ModelInput.of(manifest.preprocessing)
    results = _decode(photos(), spec)
    processor = _processor_class().from_pretrained(clip_dir)
    # Both from the same decoded pixels: the drift is the preprocessing's alone.
    theirs = np.stack([processor(images=result.pixels, return_tensors="np")["pixel_values"][0] for result in results])
    ours = np.stack([result.model_input for result in results])
    assert ours.shape == theirs.shape == (len(results), 3, 224, 224) and ours.dtype == np.float32
    error = np.abs(ours - theirs)
    level = 1 / 255 / min(spec.std)  # one pixel level, in normalised units
    assert error.mean() < 0.3 * level and error.max() < 25 * level, (error.mean() / level, error.max() / level)
    cosines = _cosines(model.run_rows(list(ours)), model.run_rows(list(theirs)))
    assert cosines.mean() >= 0.999 and cosines.min() >= 0.995, cosines


def test_the_model_input_is_the_models_dtype_and_pillow_fallback_is_exact(clip224):
    from tests.support.images import encode, make_image

    manifest, _, _ = clip224
    spec = ModelInput.of(manifest.preprocessing, "float16")
    gif = encode(make_image(3, 300, 200), "GIF")  # DALI does not decode GIF: Pillow does, then clip_pixels
    jpeg = photos()[0]
    gif_result, jpeg_result = _decode([gif, jpeg], spec)
    assert jpeg_result.model_input.dtype == gif_result.model_input.dtype == np.float16
    np.testing.assert_array_equal(gif_result.model_input, clip_pixels(gif_result.pixels, spec).astype(np.float16))
    assert (gif_result.height, gif_result.width) == (200, 300)


def test_a_crop_larger_than_the_resized_image_pads_as_hugging_face(clip224):
    """No CLIP does this (crop == shortest_edge); the other DALI path covers it all the same."""
    manifest, _, _ = clip224
    spec = ModelInput.of({**manifest.preprocessing, "shortest_edge": 200})
    (result,) = _decode([photos()[1]], spec)
    reference = clip_pixels(result.pixels, spec)
    error = np.abs(result.model_input - reference)
    assert error.mean() < 0.01 and error.max() < 0.5
    border = reference[:, :12, :]  # zero pixels, normalised
    np.testing.assert_allclose(result.model_input[:, :12, :], border, atol=1e-5)


def test_without_pixels_the_decoder_gives_sizes_only():
    encoded = photos()[:3]
    decoder = DaliImageDecoder(batch_size=4, num_threads=2, use_gpu=False, outputs=DecodeOutputs(pixels=False))
    full = DaliImageDecoder(batch_size=4, num_threads=2, use_gpu=False)
    for sized, decoded in zip(decoder.submit(encoded).result(), full.decode(encoded)):
        assert sized.pixels is None and sized.model_input is None
        assert (sized.height, sized.width) == decoded.pixels.shape[:2] == (decoded.height, decoded.width)
    assert decoder.submit(encoded).result().pixels_to_host == 0
    assert full.submit(encoded).result().pixels_to_host == 3


def test_io_binding_equals_session_run_on_the_cpu(clip224):
    manifest, _, model = clip224
    spec = ModelInput.of(manifest.preprocessing)
    rows = [result.model_input for result in _decode(photos()[:5], spec)]
    expected = np.asarray(model.session.run(None, {next(iter(model.inputs)): np.stack(rows)})[0])
    np.testing.assert_array_equal(model.run_rows(rows), expected)
    np.testing.assert_array_equal(model.run_rows(rows[1:4]), expected[1:4])  # any subset, in any order of calls


@pytest.mark.gpu
def test_on_the_gpu_the_model_input_stays_there_and_binds_in_place(clip224):
    from beam_curator.formats.model_input import DeviceRow

    manifest, _, cpu_model = clip224
    spec = ModelInput.of(manifest.preprocessing)
    encoded = photos()
    decoder = DaliImageDecoder(batch_size=len(encoded), num_threads=4, use_gpu=True,
                               outputs=DecodeOutputs(pixels=False, model_input=spec))
    results = decoder.submit(encoded).result()
    assert results.pixels_to_host == 0 and all(isinstance(result.model_input, DeviceRow) for result in results)
    on_host = _decode(encoded, spec)
    gpu_model = OnnxModel(cpu_model.path, use_gpu=True)
    assert gpu_model.on_gpu, "onnxruntime-gpu with the CUDA provider is needed for this test"
    rows = [result.model_input for result in results]
    in_place = gpu_model.run_rows(rows)  # consecutive rows of one buffer: bound where DALI left them
    gathered = gpu_model.run_rows(rows[::2])  # every other row: gathered on the device
    reference = cpu_model.run_rows([result.model_input for result in on_host])
    # The GPU's decode differs from the CPU's by a level or so; the embeddings barely.
    assert _cosines(in_place, reference).min() > 0.99
    np.testing.assert_allclose(gathered, in_place[::2], atol=1e-3)
    # The GPU's JPEG decode differs from the CPU's by up to ~11 levels at a pixel (docs/ROBUSTNESS.md):
    # compare the mean, in pixel levels.
    level = 1 / 255 / min(spec.std)
    difference = np.abs(np.stack([row.to_host() for row in rows]) - np.stack([r.model_input for r in on_host]))
    assert difference.mean() < 2 * level, difference.mean() / level
