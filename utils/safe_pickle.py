"""Read the two official pickle formats without letting a file run code.

Unpickling calls whatever function a file names (`os.system` is one opcode away), so a tampered
dataset mirror could own the machine of everyone who evaluates on it. As torch's weights-only
loading does for checkpoints, these readers rebuild only what the official files
hold and refuse anything else with one clear line naming the file:
- PerMIRS `masks.npz.npy` (PDM's `np.save` of a list of per-frame dicts {track_id: bool mask}):
  an .npy object array, i.e. builtin containers and scalars, numpy arrays and dtypes;
- revisitop `gnd_<name>.pkl` (a dict of lists and dicts of numbers and strings; arrays allowed).
"""
import pickle
from pathlib import Path

import numpy as np

from utils.errors import UserError

# the callables a numpy array, dtype or scalar pickle names (numpy 1 and numpy 2 module paths),
# and the bytes helper of Python 2-era pickles; no builtin callable is needed for dict/list/tuple
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"), ("codecs", "encode"),
}


HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which the official format never holds")


def _refused(path, err) -> UserError:
    return UserError(f"refused to unpickle: {err}", str(path),
                     "this is not the official file (tampered or foreign?): re-download it from the official source")


def load_pickle(path) -> object:
    """A pickle file of builtin containers, numbers, strings and numpy arrays."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise _refused(path, err) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as err:
        raise UserError("unreadable pickle", str(path), f"re-download it ({type(err).__name__}: {err})") from None


def load_npy(path) -> np.ndarray:
    """An .npy file; an object array is unpickled with the restricted unpickler (numpy's own
    pickle loading would run whatever the file names)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in HEADER_READERS:
                raise ValueError(f".npy format version {version}, expected 1.0 or 2.0")
            shape, _, dtype = HEADER_READERS[version](f)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            array = _RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise _refused(path, err) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError, OSError) as err:
        raise UserError("unreadable .npy file", str(path), f"re-download it ({type(err).__name__}: {err})") from None
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise UserError("unreadable .npy file", str(path), "re-download it (the payload does not match its header)")
    return array
