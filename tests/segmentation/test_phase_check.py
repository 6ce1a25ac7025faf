"""Block-phase check: the scan segmented again on shifted block lattices, and its flags."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from seg_synthetic import make_chest

from lungvol.config import LungvolConfig, QuantificationConfig, config_from_dict
from lungvol.errors import ConfigError
from lungvol.quantification import measure_volumes
from lungvol.quantification.phase_check import measure_phase_check, shifted_lattice
from lungvol.quantification.qc_flags import flag_code, phase_flags
from lungvol.segmentation import segment_masks
from lungvol.segmentation.grid import patient_index
from lungvol.types import CTVolume, SourceInfo


def _rotated(origin: tuple[float, float, float]) -> CTVolume:
    # An oblique direction matrix (rotation about z by 30 degrees, then about x by 20).
    a, b = np.deg2rad(30.0), np.deg2rad(20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return CTVolume(
        hu=np.zeros((4, 5, 6), np.int16), spacing_mm=(2.5, 0.7, 0.8), origin_lps_mm=origin,
        direction=rz @ rx, source=SourceInfo(path="x", kind="nifti", sha256=""),
    )


def test_shifted_lattice_moves_the_patient_index_by_the_offset_and_keeps_the_voxels():
    vol = _rotated((-201.3, 17.9, -355.2))
    first = patient_index(vol.origin_lps_mm, vol.direction, vol.spacing_mm)
    for offset in ((0, 0, 1), (0, 1, 0), (1, 0, 0), (2, 1, 3)):
        moved = shifted_lattice(vol, offset)
        assert patient_index(moved.origin_lps_mm, moved.direction, moved.spacing_mm) == tuple(
            f + k for f, k in zip(first, offset, strict=True)
        )
        assert moved.hu is vol.hu
        assert moved.spacing_mm == vol.spacing_mm
        np.testing.assert_array_equal(moved.direction, vol.direction)


@pytest.fixture(scope="module")
def chest_phases() -> tuple[CTVolume, object, object, dict]:
    # The synthetic chest at 1 mm voxels: blocks of 2 CT voxels in both stages, so a
    # one-voxel shift re-cuts every block.
    vol = CTVolume(
        hu=make_chest().volume.hu, spacing_mm=(1.0, 1.0, 1.0), origin_lps_mm=(0.0, 0.0, 0.0),
        direction=np.eye(3), source=SourceInfo(path="synthetic", kind="nifti", sha256=""),
    )
    cfg = LungvolConfig()
    # The reported masks: every stage, as `lungvol segment` runs them (the subpleural step's
    # solid shell adds 0.3 mL here, session 16).
    lungs, lesions = segment_masks(vol, cfg)
    return vol, lungs, lesions, measure_phase_check(vol, lungs, lesions, cfg)


def test_phase_check_reports_the_reported_result_first_and_the_spread(chest_phases):
    vol, lungs, lesions, check = chest_phases
    offsets = [r["offset_voxels"] for r in check["phases"]]
    assert offsets == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]
    ref = check["phases"][0]
    vols = measure_volumes(lungs.labels, lesions.labels, spacing_mm=vol.spacing_mm)
    assert ref["lesion_volume_ml"] == pytest.approx(vols.lesion_volume_ml, abs=1e-3)
    assert ref["solid_volume_ml"] == pytest.approx(vols.solid_volume_ml, abs=1e-3)
    assert ref["lesion_dice_vs_reported"] == 1.0
    assert ref["lung_dice_vs_reported"] == 1.0
    for name, (lo, hi) in check["range"].items():
        values = [r[name] for r in check["phases"]]
        assert (lo, hi) == (min(values), max(values))
    lo, hi = check["range"]["lesion_proportion_pct"]
    assert check["lesion_proportion_range_pp"] == pytest.approx(hi - lo, abs=1e-3)
    # The shifted lattices really re-cut the blocks: the masks differ, but little.
    shifted = check["phases"][1:]
    assert any(r["lesion_dice_vs_reported"] < 1.0 for r in shifted)
    assert all(r["lesion_dice_vs_reported"] > 0.8 for r in shifted)
    assert all(r["lung_dice_vs_reported"] > 0.98 for r in shifted)
    assert check["normal_ct_agrees"] is True  # the synthetic chest is far from 1 %


def test_a_shifted_phase_is_the_segmentation_of_the_shifted_volume(chest_phases):
    vol, _lungs, _lesions, check = chest_phases
    cfg = LungvolConfig()
    moved = shifted_lattice(vol, (0, 1, 1))
    lungs, lesions = segment_masks(moved, cfg)
    row = check["phases"][3]
    vols = measure_volumes(lungs.labels, lesions.labels, spacing_mm=vol.spacing_mm)
    assert row["lesion_volume_ml"] == pytest.approx(vols.lesion_volume_ml, abs=1e-3)
    assert row["lung_volume_ml"] == pytest.approx(vols.lung_volume_ml, abs=1e-3)


def _check(
    lesion_pct: tuple[float, ...], solid_ml: tuple[float, ...],
    lung_ml: tuple[float, ...] = (5000.0, 5006.0, 5008.0, 5001.0),
) -> dict:
    rows = [
        {"lesion_proportion_pct": p, "solid_volume_ml": s, "normal_ct": p < 1.0,
         "lung_volume_ml": v}
        for p, s, v in zip(lesion_pct, solid_ml, lung_ml, strict=True)
    ]
    return {
        "phases": rows,
        "range": {
            "lesion_proportion_pct": [min(lesion_pct), max(lesion_pct)],
            "solid_volume_ml": [min(solid_ml), max(solid_ml)],
            "lung_volume_ml": [min(lung_ml), max(lung_ml)],
        },
        "lesion_proportion_range_pp": max(lesion_pct) - min(lesion_pct),
        "solid_volume_range_ml": max(solid_ml) - min(solid_ml),
        "solid_volume_median_ml": float(np.median(solid_ml)),
        "lung_volume_median_ml": float(np.median(lung_ml)),
        "normal_ct_agrees": len({r["normal_ct"] for r in rows}) == 1,
    }


def test_phase_flags_follow_the_configured_limits():
    cfg = QuantificationConfig()
    assert phase_flags(None, config=cfg) == []
    # The real chest's spread (2 mm slices): no flag.
    assert phase_flags(_check((0.32, 0.34, 0.47, 0.44), (9.6, 11.9, 12.7, 11.8)), config=cfg) == []
    # lung1's (5 mm slices): lesion 0.51 pp and solid 7.6 mL of about 12 mL.
    flags = phase_flags(_check((2.14, 1.64, 1.90, 1.80), (14.5, 6.9, 12.0, 11.0)), config=cfg)
    assert [flag_code(f) for f in flags] == ["phase_sensitive"]
    assert "1.64-2.14 %" in flags[0]
    assert "6.9-14.5 mL" in flags[0]
    # A large solid volume whose spread is a small fraction of it: no flag.
    assert phase_flags(_check((10.0, 10.1, 10.2, 10.1), (300.0, 306.0, 310.0, 304.0)),
                       config=cfg) == []
    # The normal-CT call differs between phases.
    flags = phase_flags(_check((0.9, 1.1, 1.0, 0.95), (5.0, 5.5, 5.2, 5.1)), config=cfg)
    assert [flag_code(f) for f in flags] == ["normal_ct_phase_unstable"]
    # The lung mask itself moves (the IBSI NSCLC crop: 1090-1261 mL): flagged.
    flags = phase_flags(
        _check((12.0, 12.1, 12.2, 12.0), (80.0, 81.0, 82.0, 80.5),
               (1090.0, 1261.0, 1200.0, 1150.0)),
        config=cfg,
    )
    assert [flag_code(f) for f in flags] == ["phase_sensitive"]
    assert "1090-1261 mL" in flags[0]
    strict = dataclasses.replace(cfg, phase_flag_lesion_range_pp=0.1)
    flags = phase_flags(_check((0.32, 0.34, 0.47, 0.44), (9.6, 11.9, 12.7, 11.8)), config=strict)
    assert [flag_code(f) for f in flags] == ["phase_sensitive"]


@pytest.mark.parametrize(
    "offsets",
    [[[0, 0]], [[0, 0, 0]], [[-1, 0, 0]], [[0.5, 0, 0]], [[True, 0, 0]], [3]],
)
def test_bad_phase_offsets_are_refused(offsets):
    with pytest.raises(ConfigError, match="phase_check_offsets_voxels"):
        config_from_dict({"quantification": {"phase_check_offsets_voxels": offsets}})


def test_phase_check_needs_an_offset_and_nonnegative_limits():
    with pytest.raises(ConfigError, match="at least one"):
        config_from_dict({"quantification": {"phase_check": True,
                                             "phase_check_offsets_voxels": []}})
    with pytest.raises(ConfigError, match="phase_flag_solid_range_ml"):
        config_from_dict({"quantification": {"phase_flag_solid_range_ml": -1}})
    cfg = config_from_dict({"quantification": {"phase_check_offsets_voxels": [[1, 0, 0]]}})
    assert cfg.quantification.phase_check_offsets_voxels == ((1, 0, 0),)


def test_a_lattice_at_which_the_scan_is_refused_is_recorded_and_flagged(chest_phases, monkeypatch):
    import lungvol.segmentation as lseg
    from lungvol.errors import SegmentationError

    vol, lungs, lesions, _check = chest_phases
    refused_origin = shifted_lattice(vol, (0, 1, 0)).origin_lps_mm

    def fake_masks(volume, config):
        if volume.origin_lps_mm == refused_origin:
            raise SegmentationError("no lungs in view: the largest lung-like region is 150 mL")
        return lungs, lesions

    monkeypatch.setattr(lseg, "segment_masks", fake_masks)
    check = measure_phase_check(vol, lungs, lesions, LungvolConfig())
    assert [r["offset_voxels"] for r in check["phases"]] == [[0, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert check["failed_phases"] == [
        {"offset_voxels": [0, 1, 0],
         "error": "no lungs in view: the largest lung-like region is 150 mL"}
    ]
    assert check["lesion_proportion_range_pp"] == 0.0
    flags = phase_flags(check, config=QuantificationConfig())
    assert [flag_code(f) for f in flags] == ["phase_sensitive"]
    assert "refused at 1 of 4 lattices" in flags[0]
