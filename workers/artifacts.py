"""Model files in skops format: loading never runs code from the file.

The allow-list of types beyond skops' own safe defaults is fixed here, in our code, and never read from
a file; the SHA-256 recorded at save time is checked before a byte is parsed.
"""

from __future__ import annotations

import hashlib

import skops.io as sio
from skops.io.exceptions import UntrustedTypesFoundException

FORMAT = "skops"

# Types our models contain that skops does not trust by default (found with skops.io.get_untrusted_types
# on every registered algorithm, and on one model per regime; tests/test_training.py round-trips each one).
TRUSTED_TYPES = [
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    "workers.regimes.PerRegime",
]


class ArtifactError(Exception):
    pass


def dump(model) -> bytes:
    return sio.dumps(model)


def load(blob: bytes, sha256: str):
    actual = hashlib.sha256(blob).hexdigest()
    if actual != sha256:
        raise ArtifactError(f"model file corrupted: sha256 {actual} does not match the recorded {sha256}")
    try:
        return sio.loads(blob, trusted=TRUSTED_TYPES)
    except UntrustedTypesFoundException as error:
        raise ArtifactError(
            f"model file refused: it contains types outside the allow-list: {error}"
        ) from None
