"""Export of trained Q-CLIP models: folds, ONNX and TensorRT engines."""
