"""Optional gradient backends other than onnxcam's own engine (`onnxcam.grad`)."""
