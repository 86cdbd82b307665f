"""Model files: a document of plain values and scikit-learn estimators, saved with skops.

``gatewatch train`` writes the behaviour model with :func:`save_model_file`;
the worker reads it with :func:`load_model_file`.

Why skops and not pickle or joblib: loading a pickle (joblib files are
pickles) runs whatever code the file names, so a model file would be as
dangerous as a script (scikit-learn, "Model persistence", security section).
``skops.io`` stores the object tree as JSON plus numpy arrays and, when
loading, builds only the types it was told to trust — its defaults
(scikit-learn estimators, numpy, builtins) and :data:`TRUSTED_TYPES` here.
A file naming any other type is refused with :class:`ModelFileError`.

A file is written to a temporary name in the same folder and renamed, so a
reader never sees half a model. A model also records the scikit-learn version
it was trained with; loading under another version works when the estimator's
state did not change, and :func:`version_mismatch` says when to warn.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Types trusted beyond skops' defaults: the Isolation Forest's trees (Cython ``Tree`` objects).
TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)


class ModelFileError(RuntimeError):
    """A model file that cannot be read: unreadable, not skops, or naming untrusted types."""


class ModelFileMissing(ModelFileError):
    """No model file at that path."""


def save_model_file(doc: Mapping[str, Any], path: Path) -> Path:
    """Write ``doc`` (dict of plain values, numpy arrays and estimators) to ``path`` with
    skops, atomically; create the folder. Returns ``path``. Raises ``OSError``."""
    import skops.io as sio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        sio.dump(dict(doc), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_model_file(path: Path) -> dict[str, Any]:
    """Read a model document written by :func:`save_model_file`.

    Raises :class:`ModelFileMissing` when there is no file, :class:`ModelFileError` when it
    is not a skops file of a document, or names a type outside skops' defaults and
    :data:`TRUSTED_TYPES`.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileMissing(f"no model file at {path}")
    import skops.io as sio  # after the check: importing skops takes ~0.4 s, for nothing without a file

    try:
        untrusted = sio.get_untrusted_types(file=path)
        refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
        if refused:
            raise ModelFileError(f"{path}: refusing to load untrusted types {refused}")
        doc = sio.load(path, trusted=list(untrusted))
    except ModelFileError:
        raise
    except Exception as exc:  # a truncated file, another format, a skops/sklearn mismatch
        raise ModelFileError(f"{path}: not a readable model file: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelFileError(f"{path}: holds a {type(doc).__name__}, not a model document")
    return doc


def version_mismatch(doc: Mapping[str, Any]) -> str | None:
    """A warning text when ``doc`` was trained with another scikit-learn version, else None."""
    import sklearn

    trained = doc.get("sklearn_version")
    if trained and trained != sklearn.__version__:
        return (f"model trained with scikit-learn {trained}, running {sklearn.__version__}: "
                f"train it again (gatewatch train) if scores look wrong")
    return None
