"""Registry side of dnirecon: interpolate SN and SN-GAN, bake to ONNX, register and promote in MLflow."""
