"""Media types of artifacts and the model formats modelport knows.

A media type is a label carried in ``ArtifactRef.media_type``; the converter never trusts
it for format detection (content decides), but it tells clients what they hold.
"""

ONNX = "application/vnd.modelport.onnx"
ONNX_FOLDER = "application/vnd.modelport.onnx+tar"
"""An ONNX model with external data: ``model.onnx`` at the archive root plus the data file(s) its
tensors reference (normally one ``model.onnx.data``), packed as one tar (``modelport.onnx_files``)."""
TFLITE = "application/vnd.modelport.tflite"
KERAS = "application/vnd.modelport.keras"
H5 = "application/vnd.modelport.h5"
SAVEDMODEL = "application/vnd.modelport.savedmodel+tar"
# A torch.export program (torch.export.save; load with torch.export.load).
PYTORCH = "application/vnd.modelport.pytorch+pt2"
GENERATION = "application/vnd.modelport.generation+tar"  # model.onnx step (+ data) + generation.json
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
    "pytorch": PYTORCH,
}


def is_onnx(media_type: str) -> bool:
    """An ONNX model, self-contained (``ONNX``) or with external data (``ONNX_FOLDER``)."""
    return media_type in (ONNX, ONNX_FOLDER)
