"""The typed config: YAML defaults equal dataclass defaults, unknown keys and bad ranges fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungvol.config import CONFIG_DIR, LungvolConfig, config_from_dict, load_config
from lungvol.errors import ConfigError


def test_default_yaml_equals_dataclass_defaults() -> None:
    loaded = load_config(CONFIG_DIR / "default.yaml")
    assert loaded.to_dict() == LungvolConfig().to_dict()
    assert loaded.hash == LungvolConfig().hash


def test_packaged_default_is_the_repo_default() -> None:
    assert load_config().to_dict() == load_config(CONFIG_DIR / "default.yaml").to_dict()


def test_unknown_key_names_file_and_valid_keys(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("lesions:\n  ggo_band: [-750, -300]\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['ggo_band'\].*valid keys") as exc:
        load_config(p)
    assert str(p) in str(exc.value)


def test_a_replaced_key_says_what_replaced_it(tmp_path: Path) -> None:
    p = tmp_path / "old.yaml"
    p.write_text("lesions:\n  thin_structure_radius_mm: 1.5\n")
    with pytest.raises(ConfigError, match=r"thin_structure_radius_mm' was replaced by "
                                          r"lesions\.solid_min_width_mm since lungvol 0\.6\.6"):
        load_config(p)


def test_unknown_section_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown section"):
        config_from_dict({"lesion": {}})


def test_inverted_band_is_refused() -> None:
    with pytest.raises(ConfigError, match="low < high"):
        config_from_dict({"lesions": {"ggo_band_hu": [-300, -750]}})


@pytest.mark.parametrize(("key", "value"), [("pleural_medial_angle_deg", 120.0),
                                            ("pleural_medial_angle_deg", -1.0),
                                            ("pleural_max_gap_mm", -5.0),
                                            ("pleural_max_lung_pieces", 0),
                                            ("pleural_piece_min_area_mm2", -1.0),
                                            ("pleural_bridge_min_bone_fraction", -0.1),
                                            ("cortical_min_fraction", 1.5),
                                            ("blood_cortex_margin_hu", float("nan")),
                                            ("blood_max_hu", 150.0),
                                            ("blood_max_iqr_hu", -1.0),
                                            ("dense_core_flag_min_depth_mm", -1.0),
                                            ("dense_core_flag_min_depth_mm", float("nan")),
                                            ("thick_core_flag_min_depth_mm", -1.0),
                                            ("blood_min_depth_mm", -1.0),
                                            ("metal_core_min_hu", 600.0)])
def test_out_of_range_bone_and_hull_rules_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"lungs.{key}"):
        config_from_dict({"lungs": {key: value}})


def test_bad_tilt_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match="gantry_tilt_policy"):
        config_from_dict({"io": {"gantry_tilt_policy": "ignore"}})


def test_hash_changes_with_any_value_and_not_with_source() -> None:
    base = config_from_dict({}, where="a.yaml")
    same = config_from_dict({}, where="b.yaml")
    changed = config_from_dict({"lesions": {"ggo_band_hu": [-760, -300]}})
    assert base.hash == same.hash
    assert base.hash != changed.hash


def test_missing_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("io: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_duplicate_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    """PyYAML would keep the last of two equal keys silently; lungvol refuses the file."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("lesions:\n  min_component_volume_ml: 0.01\n  min_component_volume_ml: 0.5\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'min_component_volume_ml' at line 3"):
        load_config(dup)
    sections = tmp_path / "sections.yaml"
    sections.write_text("io:\n  min_slices: 16\nio:\n  min_slices: 8\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'io' at line 3"):
        load_config(sections)


def test_the_trial_loader_refuses_duplicate_keys_too(tmp_path: Path) -> None:
    from lungvol.cohort.trial import DEFAULT_TRIAL, load_trial

    assert load_trial(DEFAULT_TRIAL).name == "shi2022"
    dup = tmp_path / "trial.yaml"
    dup.write_text(DEFAULT_TRIAL.read_text() + "\nname: again\n")
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_trial(dup)
