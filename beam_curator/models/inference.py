"""Running the exported models: ONNX Runtime sessions fed through IO binding, caption tokens.

Everything here runs on the worker, from a stage's setup() or process_batch(); nothing imports
onnxruntime or tokenizers at module import, so building a pipeline loads no model and touches no GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from beam_curator.formats.model_input import DeviceRow

__all__ = ["CaptionTokenizer", "OnnxModel", "l2_normalise"]

_LOG = logging.getLogger(__name__)


def _preload_cuda_libraries(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries that `pip install 'beam-curator[gpu]'` brings (the nvidia-*-cu12
    wheels of onnxruntime-gpu's `cuda` and `cudnn` extras): ONNX Runtime's CUDA provider does not look in
    site-packages by itself. Where they are not installed (a CUDA base image), the system's are used."""
    if not hasattr(ort, "preload_dlls"):  # onnxruntime-gpu < 1.21
        return
    try:
        ort.preload_dlls()
    except Exception as error:  # then the provider finds the system's libraries, or falls back (warned below)
        _LOG.debug("onnxruntime.preload_dlls: %s", error)


class OnnxModel:
    """One ONNX Runtime session. InferenceSession.run is thread-safe, so the DoFn threads of a worker
    process share one (the stages hold it through apache_beam.utils.shared.Shared).

    use_gpu: run on CUDA (device_id) when this onnxruntime has the CUDA provider; else the CPU, with a
    warning naming the package to install.
    threads: ONNX Runtime's intra-op threads (None: its default, one per core). 1 runs the model on the
    calling thread, with no pool: for a model whose run takes microseconds (a score head), a pool's
    threads would only spin after each call, on the cores that DALI decodes on.
    """

    def __init__(self, path: str, *, use_gpu: bool, device_id: int = 0, threads: int | None = None):
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        if use_gpu:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                _preload_cuda_libraries(ort)
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
            else:
                _LOG.warning("this worker has a GPU but its onnxruntime has no CUDA provider (install "
                             "onnxruntime-gpu instead of onnxruntime: pip install 'beam-curator[gpu]'); "
                             "%s runs on the CPU", path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.path = path
        self.provider = self.session.get_providers()[0]
        self.inputs = {arg.name: arg for arg in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name
        first = next(iter(self.inputs.values()))
        self.input_dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        self.device_id = device_id
        self.on_gpu = self.provider == "CUDAExecutionProvider"
        if len(providers) > 1 and not self.on_gpu:  # ONNX Runtime falls back to the CPU when CUDA fails to load
            _LOG.warning("%s: the CUDA provider did not load (its CUDA or cuDNN libraries are missing or do not "
                         "match: see docs/DEPLOYMENT.md, CUDA pairs); the model runs on the CPU", path)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The model's first output for one call, as float32."""
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)

    def run_rows(self, rows: Sequence[np.ndarray | DeviceRow]) -> np.ndarray:
        """The model's first output (float32) for one call whose single input is `rows` (host arrays,
        or DeviceRows in GPU memory), bound through ONNX Runtime's IO binding, on the CPU and on CUDA
        alike: rows that follow each other in one GPU buffer are read in place, other GPU rows are
        gathered on the device, host rows are stacked once."""
        (name,) = self.inputs
        binding = self.session.io_binding()
        bound = self._bind(binding, name, rows)  # held until the run is over
        binding.bind_output(self.output_name, "cpu")
        self.session.run_with_iobinding(binding)
        del bound
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def _bind(self, binding, name: str, rows: Sequence[np.ndarray | DeviceRow]):
        dtype = np.dtype(self.input_dtype)
        on_device = [row for row in rows if isinstance(row, DeviceRow)]
        if self.on_gpu and on_device and len(on_device) == len(rows) \
                and all(row.rows.dtype == dtype and row.rows.shape == on_device[0].rows.shape for row in on_device):
            import onnxruntime as ort

            first = on_device[0]
            shape = [len(rows), *first.rows.shape]
            step = first.rows.row_bytes
            if all(row.pointer == first.pointer + index * step for index, row in enumerate(on_device)):
                binding.bind_input(name, "cuda", first.rows.device_id, dtype, shape, first.pointer)  # in place
                return on_device
            gathered = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", first.rows.device_id)
            for index, row in enumerate(on_device):
                row.copy_to(gathered.data_ptr() + index * step)
            binding.bind_ortvalue_input(name, gathered)
            return gathered
        host = np.ascontiguousarray(np.stack([row.to_host() if isinstance(row, DeviceRow) else row for row in rows]),
                                    dtype=dtype)
        binding.bind_input(name, "cpu", 0, dtype, list(host.shape), host.ctypes.data)
        return host

    def run_in_chunks(self, array: np.ndarray, batch_size: int) -> np.ndarray:
        """The model's output over `array` (its single input), at most batch_size rows per call."""
        (name,) = self.inputs
        outputs = [self.run({name: array[start:start + batch_size].astype(self.input_dtype, copy=False)})
                   for start in range(0, len(array), batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0,), dtype=np.float32)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class CaptionTokenizer:
    """CLIP's tokenizer from the tokenizer.json export-models saved (the `tokenizers` library: no
    transformers), truncated to the text model's context length, padded to the longest caption."""

    def __init__(self, path: str, *, context_length: int, pad_token_id: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(path)
        self._tokenizer.enable_truncation(max_length=int(context_length))  # special tokens kept at the ends
        pad_token = self._tokenizer.id_to_token(int(pad_token_id))
        if pad_token is None:
            raise ValueError(f"{path} has no token of id {pad_token_id} (the manifest's pad_token_id)")
        self._tokenizer.enable_padding(pad_id=int(pad_token_id), pad_token=pad_token)

    def __call__(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(captions))
        return {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64)}
