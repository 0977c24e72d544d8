"""Using a trained detector elsewhere: the Python API (``Detector``) and the ONNX/OpenVINO export."""
