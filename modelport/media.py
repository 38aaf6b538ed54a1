"""Media types of artifacts and the model formats modelport knows.

A media type is a label carried in ``ArtifactRef.media_type``; the converter never trusts
it for format detection (content decides), but it tells clients what they hold.
"""

ONNX = "application/vnd.modelport.onnx"
# model.onnx + model.onnx.data (external data, for weights past protobuf's 2 GiB) packed as one tar.
ONNX_FOLDER = "application/vnd.modelport.onnx+tar"
TFLITE = "application/vnd.modelport.tflite"
KERAS = "application/vnd.modelport.keras"
H5 = "application/vnd.modelport.h5"
SAVEDMODEL = "application/vnd.modelport.savedmodel+tar"
MODEL_REPOSITORY = "application/vnd.modelport.model-repository+tar"
NPZ = "application/vnd.modelport.npz"
TAR = "application/x-tar"
OCTET = "application/octet-stream"

BY_FORMAT = {
    "onnx": ONNX,
    "tflite": TFLITE,
    "keras": KERAS,
    "h5": H5,
    "savedmodel": SAVEDMODEL,
}
