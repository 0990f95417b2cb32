"""Model files in skops format: loading never runs code from the file.

The allow-list of types beyond skops' own safe defaults is fixed here, in our code, and never read from
a file; the SHA-256 recorded at save time is checked before a byte is parsed.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import sys
from zipfile import ZIP_STORED, ZipFile, ZipInfo

import skops
import skops.io as sio
from skops.io._utils import SaveContext, get_state
from skops.io.exceptions import UntrustedTypesFoundException

from queue_app.errors import ArtifactError

FORMAT = "skops"

# Types our models contain that skops does not trust by default (found with skops.io.get_untrusted_types
# on every registered algorithm, and on one model per regime; tests/test_training.py round-trips each one).
TRUSTED_TYPES = [
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    "workers.modelling.regimes.PerRegime",
    "workers.modelling.algorithms.TimeOrderedHistGradientBoosting",
]
# Types whose module moved after model files named them (a file names each type by its module): old name
# -> new name. A file written before the move loads as the same type, trusted as much as its new name.
MOVED_TYPES = {"workers.regimes.PerRegime": "workers.modelling.regimes.PerRegime"}


__all__ = ["FORMAT", "ArtifactError", "dump", "load"]


class _CanonicalZip(ZipFile):
    """A zip whose entries carry a fixed time (writestr stamps the current one), so the same model is
    the same bytes whenever it is saved."""

    def writestr(self, zinfo_or_arcname, data, *args, **kwargs):
        if isinstance(zinfo_or_arcname, str):
            zinfo_or_arcname = ZipInfo(zinfo_or_arcname, date_time=(1980, 1, 1, 0, 0, 0))
            zinfo_or_arcname.external_attr = 0o600 << 16
        return super().writestr(zinfo_or_arcname, data, *args, **kwargs)


class _CanonicalContext(SaveContext):
    """skops' save context, numbering the objects it memoizes in the order it meets them where skops
    uses their id() (which names each array's file and each shared object's __id__): the same model is
    the same bytes whatever memory it sits in, so a model trained again hashes to the recorded SHA-256."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.numbers: dict[int, int] = {}

    def memoize(self, obj) -> int:
        super().memoize(obj)  # keeps obj alive while saving, as skops does
        return self.numbers.setdefault(id(obj), len(self.numbers) + 1)  # from 1: skops reads 0 as none

    def clear_memo(self) -> None:
        super().clear_memo()
        self.numbers.clear()


def dump(model) -> bytes:
    """skops.io.dumps, canonical and compact: its schema as compact JSON (skops indents it, which turns off
    the C JSON encoder and took two thirds of a RandomForest's save, and 40 % of its size), objects
    numbered in order rather than by id() and entries with a fixed time (so the same model is the same
    bytes: _CanonicalContext). The file is the same skops format (`sio.loads` reads either); pyproject pins
    the skops versions this is checked on."""
    buffer = io.BytesIO()
    with _CanonicalZip(buffer, "w", compression=ZIP_STORED) as zip_file:
        context = _CanonicalContext(zip_file=zip_file)
        state = get_state(model, context)
        context.clear_memo()
        state["protocol"] = context.protocol
        state["_skops_version"] = skops.__version__
        zip_file.writestr("schema.json", json.dumps(state, separators=(",", ":")))
    return buffer.getvalue()


def load(blob: bytes, sha256: str):
    actual = hashlib.sha256(blob).hexdigest()
    if actual != sha256:
        raise ArtifactError(f"model file corrupted: sha256 {actual} does not match the recorded {sha256}")
    for old, new in MOVED_TYPES.items():  # the old module name, as an alias of the new module
        sys.modules.setdefault(old.rpartition(".")[0], importlib.import_module(new.rpartition(".")[0]))
    try:
        return sio.loads(blob, trusted=[*TRUSTED_TYPES, *MOVED_TYPES])
    except UntrustedTypesFoundException as error:
        raise ArtifactError(
            f"model file refused: it contains types outside the allow-list: {error}"
        ) from None
