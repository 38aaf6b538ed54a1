"""Load a large Keras ``.keras`` or legacy ``.h5`` file holding about one copy of its weights, not three.

``keras.saving.load_model`` builds the model with every variable randomly initialized, reads each weight
from HDF5 into a numpy array, converts that to a TensorFlow tensor (which TensorFlow copies twice for a
large array) and assigns it; with enough free memory it first reads the whole weights file into bytes.
For VGG-16 (553 MB of weights) that peaks at 1.9 GB above the process's baseline. Here, for the length of
one ``load_model`` call:

- the model is built inside a Keras ``StatelessScope``, so its variables are created uninitialized
  (Keras' own deferred initialization) instead of filled with random values;
- the weights file is extracted to disk rather than read into memory (``.keras``);
- a large HDF5 dataset is handed to ``Variable.assign`` as the dataset itself, and read block by block
  (16 MiB at a time) into a buffer that becomes the variable's (see ``_from_dataset``): at most the
  weights plus one extra copy of the largest tensor at once.

Everything else (config parsing, safe mode, custom objects, which variable takes which dataset) is Keras'
own code. Variables the file did not fill get Keras' deferred initialization at the end. The patches are
undone when the call returns; a failure falls back to plain ``load_model`` (see ``models.KerasModel``).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np

BLOCK_BYTES = 16 << 20  # bytes per block copied from HDF5 into a variable
LAZY_MIN_BYTES = 4 << 20  # datasets from this size are copied block by block
_LOCK = threading.Lock()  # the patches are process-wide: one lean load at a time


def _from_dataset(dataset, dtype):
    """A tensor holding an HDF5 dataset, built with one extra copy of it at most.

    A scratch variable (uninitialized memory) is filled in place, 16 MiB at a time, with the raw
    strided-slice-assign op (``v[a:b].assign()`` would read, and so copy, the whole variable first). A
    variable written that way serves every later read as a copy ("copy-on-read", TensorFlow's mode after a
    partial update), so it is read once into a plain tensor and dropped: the model's variable is then created
    from that tensor and reads share its buffer.
    """
    import tensorflow as tf

    shape = tuple(int(d) for d in dataset.shape)
    np_dtype = np.dtype(dtype.as_numpy_dtype)
    scratch = tf.Variable(tf.raw_ops.Empty(shape=shape, dtype=dtype, init=False), trainable=False)
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dataset.dtype.itemsize)
    step = max(1, BLOCK_BYTES // row_bytes)
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        block = np.asarray(dataset[start:stop]).astype(np_dtype, copy=False)
        tf.raw_ops.ResourceStridedSliceAssign(ref=scratch.handle, begin=[start] + [0] * (len(shape) - 1),
                                              end=[stop, *shape[1:]], strides=[1] * len(shape), value=block)
    value = scratch.read_value()
    del scratch
    return value


@contextlib.contextmanager
def _patched():
    import h5py
    import tensorflow as tf
    from keras.src.backend.common import global_state
    from keras.src.backend.common import variables as kvars
    from keras.src.backend.common.stateless_scope import StatelessScope, in_stateless_scope
    from keras.src.legacy.saving import legacy_h5_format, saving_utils
    from keras.src.saving import saving_lib

    orig_from_config = saving_lib._model_from_config
    orig_legacy_from_config = saving_utils.model_from_config
    orig_subset = legacy_h5_format.load_subset_weights_from_hdf5_group
    orig_getitem = saving_lib.H5IOStore.__getitem__
    orig_assign = kvars.Variable.assign
    orig_sufficient = saving_lib.is_memory_sufficient

    def model_from_config(*args, **kwargs):
        with StatelessScope(initialize_variables=False):  # left uninitialized until their weights arrive
            return orig_from_config(*args, **kwargs)

    def legacy_model_from_config(*args, **kwargs):
        with StatelessScope(initialize_variables=False):
            return orig_legacy_from_config(*args, **kwargs)

    def legacy_subset(group):  # legacy .h5: the datasets themselves for large weights, arrays otherwise
        names = legacy_h5_format.load_attributes_from_hdf5_group(group, "weight_names")
        out = []
        for name in names:
            ds = group[name]
            big = isinstance(ds, h5py.Dataset) and ds.ndim >= 1 and "dtype" not in ds.attrs \
                and ds.size * ds.dtype.itemsize >= LAZY_MIN_BYTES
            out.append(ds if big else np.asarray(ds))
        return out

    def getitem(self, key):
        value = saving_lib.safe_get_h5_dataset(self._h5_entry_group, key) \
            if hasattr(saving_lib, "safe_get_h5_dataset") else self._h5_entry_group[key]
        big = isinstance(value, h5py.Dataset) and value.size * value.dtype.itemsize >= LAZY_MIN_BYTES
        if big and value.ndim >= 1 and "dtype" not in value.attrs:
            return value
        return orig_getitem(self, key)

    def assign(self, value):
        if in_stateless_scope() or not isinstance(value, h5py.Dataset):
            if self._value is None and not in_stateless_scope():
                with tf.init_scope():
                    self._initialize(tf.zeros(self._shape, dtype=self._dtype))
            return orig_assign(self, value)
        if tuple(value.shape) != tuple(self.shape):
            raise ValueError(f"the weights file has shape {tuple(value.shape)} for {self.path}, the model "
                             f"expects {tuple(self.shape)}")
        with tf.init_scope():
            filled = _from_dataset(value, tf.as_dtype(self._dtype))
            if self._value is None:
                self._initialize(filled)
            else:
                self._direct_assign(filled)
        return self._value

    saving_lib._model_from_config = model_from_config
    saving_utils.model_from_config = legacy_model_from_config
    legacy_h5_format.load_subset_weights_from_hdf5_group = legacy_subset
    saving_lib.H5IOStore.__getitem__ = getitem
    kvars.Variable.assign = assign
    saving_lib.is_memory_sufficient = lambda model: False  # extract the weights file to disk
    try:
        yield
    finally:
        saving_lib._model_from_config = orig_from_config
        saving_utils.model_from_config = orig_legacy_from_config
        legacy_h5_format.load_subset_weights_from_hdf5_group = orig_subset
        saving_lib.H5IOStore.__getitem__ = orig_getitem
        kvars.Variable.assign = orig_assign
        saving_lib.is_memory_sufficient = orig_sufficient
        # Variables no dataset filled (none in a complete file) get their initializers now.
        pending = global_state.get_global_attribute("uninitialized_variables") or []
        for v in list(pending):
            if getattr(v, "_value", None) is None:
                v._deferred_initialize()
        global_state.set_global_attribute("uninitialized_variables", [])


def load_keras_lean(path: str, safe_mode: bool) -> Any:
    """``keras.saving.load_model(path, compile=False, safe_mode=...)`` with one copy of the weights."""
    import keras

    with _LOCK, _patched():
        model = keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    unset = [v.path for v in model.variables if getattr(v, "_value", 0) is None]
    if unset:
        raise ValueError(f"{len(unset)} variable(s) were not initialized: {unset[:3]}")
    return model
