"""The model path: MODEL_DIR manifests, ONNX Runtime sessions and CLIP preprocessing, and export-models."""
