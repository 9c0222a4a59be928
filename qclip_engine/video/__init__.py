"""Video in: decoding, frame-difference MSE and frame sampling."""
