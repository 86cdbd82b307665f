"""Model files with skops: the behaviour model round-trips, anything but trusted types is
refused, missing and broken files raise clear errors, writes leave no temporary files."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import pytest
import sklearn

from detectors.behaviour_features import windows_of
from detectors.behaviour_model import BehaviourModel
from gatewatch.model_file import (ModelFileError, ModelFileMissing, load_model_file, save_model_file,
                                  version_mismatch)
from tests.detectors.behaviour_history import T0, benign_history, trained_model


def test_the_behaviour_model_round_trips(tmp_path: Path) -> None:
    model = trained_model()
    path = save_model_file(model.to_document(), tmp_path / "models" / "behaviour.skops")
    assert sorted(p.name for p in path.parent.iterdir()) == ["behaviour.skops"]  # no temporary left
    loaded = BehaviourModel.from_document(load_model_file(path))
    probe = list(windows_of(benign_history(seed=7, hours=1, start=T0 + timedelta(days=3), traffic_seed=4)))
    assert [s.score for s in loaded.score(probe)] == [s.score for s in model.score(probe)]
    assert loaded.training == model.training and loaded.medians == model.medians
    assert loaded.sklearn_version == sklearn.__version__ and version_mismatch(loaded.to_document()) is None
    assert "train it again" in version_mismatch({"sklearn_version": "0.1"})


def test_untrusted_types_are_refused(tmp_path: Path) -> None:
    path = save_model_file({"format": "x", "payload": Fraction(1, 3)}, tmp_path / "evil.skops")
    with pytest.raises(ModelFileError, match="untrusted types.*fractions.Fraction"):
        load_model_file(path)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileMissing):
        load_model_file(tmp_path / "nothing.skops")
    broken = tmp_path / "broken.skops"
    broken.write_bytes(b"not a zip file at all")
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model_file(broken)
    listed = save_model_file({"a": [1, 2]}, tmp_path / "list.skops")
    assert load_model_file(listed) == {"a": [1, 2]}
