"""Typed configuration loaded from YAML in ``configs/``.

Each pipeline stage owns one frozen section. ``load_config`` rejects unknown keys (naming
the file and the valid keys) and checks ranges in ``__post_init__``. The resolved config is
hashed (``config_hash``) and recorded in every output's provenance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lungvol.errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_CONFIGS = _PACKAGE_DIR.parents[1] / "configs"
# The repo's configs/ in a source checkout; in an installed wheel the same YAML files ship
# inside the package (default.yaml and shi2022.yaml are symlinks into configs/ in the repo).
CONFIG_DIR = _REPO_CONFIGS if (_REPO_CONFIGS / "default.yaml").is_file() else _PACKAGE_DIR
PACKAGED_DEFAULT = _PACKAGE_DIR / "default.yaml"


def content_hash(data: dict[str, Any]) -> str:
    """sha256 of ``data`` as canonical JSON (sorted keys), first 16 hex digits."""
    blob = json.dumps(data, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _check_band(name: str, band: tuple[float, float]) -> None:
    if len(band) != 2 or not band[0] < band[1]:
        raise ConfigError(f"{name} must be [low, high] with low < high, got {list(band)}")


@dataclass(frozen=True)
class IOConfig:
    """Reading and validating input scans."""

    min_slices: int = 16
    # Largest gap between slice positions, as a multiple of the median gap, before the
    # series is called "missing slices" and refused.
    missing_slice_gap_factor: float = 1.5
    # Relative spread of slice gaps tolerated as "even"; beyond it (but below the missing
    # slice factor) the volume is resampled to the median gap with a warning.
    uneven_spacing_tolerance_fraction: float = 0.05
    # "resample" or "refuse" for gantry-tilted acquisitions.
    gantry_tilt_policy: str = "resample"
    max_gantry_tilt_deg: float = 30.0
    # A CT in HU has air near -1000 HU; these bounds decide "not HU".
    air_hu_max: float = -850.0
    min_value_hu_max: float = -900.0
    # Values below this are padding outside the field of view (-2048, -3024 ...), not air;
    # the "is there air" check ignores them.
    padding_hu_max: float = -1100.0
    # Series selection: a series "covers" the scan when its z extent is at least this
    # fraction of the largest extent among usable series; the thinnest covering one wins.
    series_coverage_fraction: float = 0.9
    # Gantry tilt is detected when the slice stack is sheared in-plane by more than this
    # many pixels from first to last slice (smaller shear is rounding in the positions).
    tilt_shear_tolerance_px: float = 0.5
    # Between series of the same spacing and coverage (one acquisition reconstructed twice),
    # prefer this kernel: "sharp" (lung, the "high-resolution" of HRCT), "smooth" (soft
    # tissue) or "none" (slice count, then UID). The same choice at every visit keeps the
    # lesion bands comparable; a UID tie-break could pick differently per visit.
    prefer_kernel: str = "sharp"

    def __post_init__(self) -> None:
        if self.prefer_kernel not in ("sharp", "smooth", "none"):
            raise ConfigError(
                f"io.prefer_kernel must be 'sharp', 'smooth' or 'none', got "
                f"{self.prefer_kernel!r}"
            )
        if self.min_slices < 1:
            raise ConfigError(f"io.min_slices must be >= 1, got {self.min_slices}")
        if self.missing_slice_gap_factor <= 1.0:
            raise ConfigError("io.missing_slice_gap_factor must be > 1")
        if not 0.0 < self.series_coverage_fraction <= 1.0:
            raise ConfigError(
                "io.series_coverage_fraction must be in (0, 1], got "
                f"{self.series_coverage_fraction}"
            )
        if self.tilt_shear_tolerance_px < 0:
            raise ConfigError("io.tilt_shear_tolerance_px must be >= 0")
        if self.gantry_tilt_policy not in ("resample", "refuse"):
            raise ConfigError(
                f"io.gantry_tilt_policy must be 'resample' or 'refuse', got "
                f"{self.gantry_tilt_policy!r}"
            )


@dataclass(frozen=True)
class LungSegmentationConfig:
    """Lung segmentation (right/left, pathology included)."""

    working_spacing_mm: float = 2.0  # isotropic-ish coarse grid for the heavy work
    air_threshold_hu: float = -500.0  # below: air-like (lung parenchyma, airways, outside)
    body_threshold_hu: float = -300.0  # above: soft tissue / bone
    # Surface refinement on the CT grid: a voxel at the lung surface is lung below this (the
    # half-occupancy point between aerated lung, about -850, and soft tissue, about +40).
    surface_threshold_hu: float = -400.0
    airway_max_hu: float = -950.0  # seed threshold for trachea/main bronchi
    min_lung_volume_ml: float = 200.0  # a lung candidate smaller than this is not a lung
    fill_closing_radius_mm: float = 20.0  # closing that brings dense pathology into the lung
    pleural_hull: bool = True  # include pleura-based opacities via a slice-wise hull
    smoothing_radius_mm: float = 2.0
    # Border-touching air with a median above this is lung cut by the field of view;
    # at or below it, it is outside air (pure air reads about -1000 HU).
    pure_air_max_hu: float = -950.0
    # Gas, not lung: an internal-air component with more than gas_min_fraction of its
    # working-grid blocks below gas_max_hu AND more than lung_max_air_fraction below
    # pure_air_max_hu is bowel or stomach gas or air outside the body (an abdomen scan's
    # colon read as a 356 mL "right lung" before session 7). Lungs here: <= 0.005 and
    # <= 0.03; emphysema lowers lung blocks towards -950, rarely to -990.
    gas_max_hu: float = -990.0
    gas_min_fraction: float = 0.1
    lung_max_air_fraction: float = 0.4
    gas_warning_min_ml: float = 600.0  # a rejected gas region this large gets a QC flag
    # ... unless the bronchi enter it: this much of its surface against the proximal airway
    # tree (with its wall) makes an airy component lung (severe emphysema; the real chest's
    # lungs: about 150 / 270 mm2, session 15).
    gas_airway_contact_min_mm2: float = 40.0
    # The trachea seed is searched at lumen thresholds from airway_max_hu up to this (HU):
    # tracheal air reads -950..-970 HU in 2 mm blocks on the real chest here, so a scan
    # 20 HU brighter needs -940; a bronchus of the IBSI NSCLC crop passes at -900.
    trachea_seed_max_hu: float = -920.0
    # Trachea search: top fraction of the internal-air slices, lumen area [min, max] in mm2,
    # largest left-right offset from the body centre as a fraction of the half body width.
    trachea_search_fraction: float = 0.3
    trachea_area_mm2: tuple[float, float] = (40.0, 1000.0)
    trachea_max_offset_fraction: float = 0.25
    airway_max_volume_ml: float = 250.0  # a larger grown tree = leakage into the lung
    # Airway growth threshold rises from airway_max_hu to this, in steps, until leakage.
    airway_threshold_max_hu: float = -850.0
    airway_threshold_step_hu: float = 10.0
    # Airway is "proximal" (removed) where lung parenchyma fills less than this fraction
    # of a box of +/- airway_neighbourhood_mm around it (trachea, main bronchi, hila).
    airway_neighbourhood_mm: float = 10.0
    proximal_airway_max_lung_fraction: float = 0.4
    airway_wall_mm: float = 3.0  # wall band removed around the proximal airway
    fragment_distance_mm: float = 4.0  # small lung-like air islands this close join a lung
    pathology_max_hu: float = 100.0  # closing/hull may add voxels at or below this (no bone)
    # 2-D holes whose top+bottom faces touch non-lung for more than this fraction open onto
    # the abdomen (diaphragm dome) and are not filled.
    max_open_face_fraction: float = 0.5
    pleural_max_depth_mm: float = 60.0  # deepest pleura-based opacity added by the hull
    # A hull deficit is pleura-based (added) when at least this fraction of its outer chord
    # has bone (ribs, coarse HU >= bone_min_hu) within bone_search_mm in the slice.
    pleural_min_bone_fraction: float = 0.5
    # ... and not when its chord faces the midline (outward normal within this angle of it)
    # with a bone-free stretch longer than pleural_max_gap_mm: a chord across the heart
    # whose two ends lie near ribs.
    pleural_medial_angle_deg: float = 45.0
    pleural_max_gap_mm: float = 15.0
    # A deficit touching more than pleural_max_lung_pieces separate pieces of the lung (each
    # at least pleural_piece_min_area_mm2) in its slice spans what separates them (at the
    # base, the diaphragm dome's stomach and spleen): it needs pleural_bridge_min_bone_fraction
    # of its chord along the ribs instead (> 1: never added).
    pleural_max_lung_pieces: int = 1
    pleural_piece_min_area_mm2: float = 100.0
    pleural_bridge_min_bone_fraction: float = 0.75
    bone_min_hu: float = 200.0
    # Bone = 3-D components of blocks >= bone_min_hu in which at least cortical_min_fraction
    # of the blocks hold a CT voxel >= cortical_min_hu (cortex): contrast-enhanced blood
    # (heart, aorta) is not bone.
    cortical_min_hu: float = 600.0
    cortical_min_fraction: float = 0.02
    # ... and a core of such a component (one erosion) of at least this volume without
    # that cortex fraction is enhanced blood joined to bone (aorta on the spine; 0 = off).
    blood_core_min_ml: float = 5.0
    # Near a homogeneous core (block means' IQR <= blood_max_iqr_hu, median below
    # blood_max_hu) a cortical block must also be blood_cortex_margin_hu denser (block
    # mean) than the core's median: bright blood's (CT angiography) noise tail reaches
    # cortical_min_hu but is no denser than the rest of the blood. A homogeneous core
    # denser than blood_max_hu is compact bone.
    blood_max_iqr_hu: float = 110.0
    blood_cortex_margin_hu: float = 200.0
    blood_max_hu: float = 650.0
    # A homogeneous core (as above) at or above blood_max_hu that lies at least this deep
    # inside its bone component (mm: distance to its surface) raises the QC flag
    # dense_homogeneous_bone: no real bone here is that uniform (IQR 82-537 HU), dense
    # contrast blood is (the simulated CT-angiography pool 25.7 mm deep; the phantoms'
    # sternum, 900 HU throughout, 7.7-8.4 mm). 0 = off.
    dense_core_flag_min_depth_mm: float = 10.0
    # Any core at least this deep raises the QC flag thick_bone_core: the real scans' bone
    # cores lie at most 9.5 mm deep, the phantoms' vertebrae 13.6 mm; a blood pool whose
    # parts enhance differently (neither uniform nor blood to the bone map) 25.7 mm. 0 = off.
    thick_core_flag_min_depth_mm: float = 20.0
    # A core at least this deep in its bone component is blood whatever its cortex (0 =
    # off, the default: the rerun thick_bone_core advises for a contrast-enhanced scan).
    blood_min_depth_mm: float = 0.0
    # A core whose median block mean is at least this dense is metal (a shoulder prosthesis
    # at the scan's edge), never blood: neither flag above nor blood_min_depth_mm.
    metal_core_min_hu: float = 2000.0
    # A rejected (cortex-free) region at least this large is enhanced blood: QC flag
    # contrast_enhanced (the plain real scans' largest is 0.8-7.3 mL, enhanced heart ~350 mL).
    contrast_blood_min_ml: float = 50.0
    bone_search_mm: float = 15.0
    # Closing/hole additions within this distance of mediastinal soft tissue (body, not
    # lung, no bone within bone_search_mm in the slice) are dropped: hilar vessels and
    # bronchial walls, mediastinal bulges. In-plane holes enclosed by lung are kept.
    hilar_exclusion_mm: float = 10.0
    hilar_zone_mm: float = 18.0  # the hila: within this distance of the detected airway tree
    # The pleural hull's bone test uses ribs only: bone within this distance of the midline
    # (spine, sternum) is ignored, so deficits facing the mediastinum are not added.
    midline_bone_half_width_mm: float = 30.0
    # Outer rim of dense disease that reaches the pleura (lungs._lesion_rim); 0 mm = off.
    # Dense lung grows into soft tissue whose HU continues that of the lesion beside it.
    rim_max_mm: float = 4.0  # thickest rim added on the working grid
    rim_seed_min_hu: float = -150.0  # lung at or above this is dense disease (seeds the rim)
    rim_min_hu: float = -300.0  # rim voxels lie in [rim_min_hu, rim_max_hu]
    rim_max_hu: float = 100.0
    rim_min_dense_neighbours: int = 4  # of the 26 neighbours (working grid) dense lung
    rim_min_dense_neighbours_ct_grid: int = 7  # same, for the CT-grid pass (noisier voxels)
    # |HU - mean HU of the dense neighbours| at most this: lesion texture varies slowly,
    # the step to extrapleural fat or to muscle is larger.
    rim_max_step_hu: float = 40.0
    rim_envelope_radius_mm: float = 40.0  # the rim stays inside the lung closed by this
    rim_envelope_tolerance_mm: float = 1.0  # ... or at most this far outside it
    # True: on the mediastinal side (between the lungs' centroids) the rim grows only within
    # bone_search_mm of bone (paravertebral). Off by default: on the thin-slice scans here it
    # changes nothing but costs a third of the rim's gain on inserted lesions; on a 5 mm scan
    # (pyradiomics lung1) the unrestricted rim grew a closing leak by 16 mL of heart.
    rim_medial_requires_bone: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "trachea_area_mm2", tuple(float(v) for v in self.trachea_area_mm2)
        )
        _check_band("lungs.trachea_area_mm2", self.trachea_area_mm2)
        if self.working_spacing_mm <= 0:
            raise ConfigError("lungs.working_spacing_mm must be > 0")
        if not self.air_threshold_hu > -1024:
            raise ConfigError("lungs.air_threshold_hu must be above -1024")
        if not self.air_threshold_hu <= self.surface_threshold_hu <= self.body_threshold_hu:
            raise ConfigError(
                "lungs.surface_threshold_hu must lie between lungs.air_threshold_hu and "
                f"lungs.body_threshold_hu (got {self.surface_threshold_hu}); set it in that "
                "range (default -400, the half-lung, half-tissue point)"
            )
        for key in ("gas_min_fraction", "lung_max_air_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"lungs.{key} must be in [0, 1] (got {getattr(self, key)})")
        if not self.airway_max_hu <= self.trachea_seed_max_hu <= self.airway_threshold_max_hu:
            raise ConfigError(
                "lungs.trachea_seed_max_hu must lie between lungs.airway_max_hu and "
                f"lungs.airway_threshold_max_hu (got {self.trachea_seed_max_hu})"
            )
        if self.gas_airway_contact_min_mm2 < 0:
            raise ConfigError(
                "lungs.gas_airway_contact_min_mm2 must be >= 0 (a huge value turns the airway "
                f"exception off; got {self.gas_airway_contact_min_mm2})"
            )
        if not 0.0 <= self.cortical_min_fraction <= 1.0:
            raise ConfigError(
                f"lungs.cortical_min_fraction must be in [0, 1] (got {self.cortical_min_fraction})"
            )
        if self.blood_core_min_ml < 0:
            raise ConfigError(
                f"lungs.blood_core_min_ml must be >= 0 (0 turns the rule off; got "
                f"{self.blood_core_min_ml})"
            )
        if math.isnan(self.blood_cortex_margin_hu):
            raise ConfigError(
                "lungs.blood_cortex_margin_hu must be a number of HU (-.inf gives lungvol "
                "0.6.10's absolute cortex test)"
            )
        if self.blood_max_iqr_hu < 0:
            raise ConfigError(
                f"lungs.blood_max_iqr_hu must be >= 0 (got {self.blood_max_iqr_hu})"
            )
        if self.blood_max_hu <= self.bone_min_hu:
            raise ConfigError(
                f"lungs.blood_max_hu must be above lungs.bone_min_hu (got {self.blood_max_hu})"
            )
        if not self.dense_core_flag_min_depth_mm >= 0:
            raise ConfigError(
                "lungs.dense_core_flag_min_depth_mm must be >= 0 mm (0 turns the "
                f"dense_homogeneous_bone flag off; got {self.dense_core_flag_min_depth_mm})"
            )
        if not self.blood_min_depth_mm >= 0:
            raise ConfigError(
                "lungs.blood_min_depth_mm must be >= 0 mm (0, the default, turns the depth "
                f"rule off; got {self.blood_min_depth_mm})"
            )
        if not self.metal_core_min_hu > self.blood_max_hu:
            raise ConfigError(
                "lungs.metal_core_min_hu must be above lungs.blood_max_hu (got "
                f"{self.metal_core_min_hu})"
            )
        if not self.thick_core_flag_min_depth_mm >= 0:
            raise ConfigError(
                "lungs.thick_core_flag_min_depth_mm must be >= 0 mm (0 turns the "
                f"thick_bone_core flag off; got {self.thick_core_flag_min_depth_mm})"
            )
        if self.pleural_bridge_min_bone_fraction < 0:
            raise ConfigError(
                "lungs.pleural_bridge_min_bone_fraction must be >= 0 (> 1 never adds a deficit "
                f"between lung pieces; got {self.pleural_bridge_min_bone_fraction})"
            )
        if self.pleural_max_lung_pieces < 1 or self.pleural_piece_min_area_mm2 < 0:
            raise ConfigError(
                "lungs.pleural_max_lung_pieces must be >= 1 (got "
                f"{self.pleural_max_lung_pieces}) and lungs.pleural_piece_min_area_mm2 >= 0 "
                f"(got {self.pleural_piece_min_area_mm2})"
            )
        if not 0.0 <= self.pleural_medial_angle_deg <= 90.0 or self.pleural_max_gap_mm < 0:
            raise ConfigError(
                "lungs.pleural_medial_angle_deg must be in [0, 90] (got "
                f"{self.pleural_medial_angle_deg}) and lungs.pleural_max_gap_mm >= 0 (got "
                f"{self.pleural_max_gap_mm})"
            )


@dataclass(frozen=True)
class LesionSegmentationConfig:
    """Lesion densitometry inside the lungs."""

    ggo_band_hu: tuple[float, float] = (-750.0, -300.0)  # [low, high)
    solid_band_hu: tuple[float, float] = (-300.0, 50.0)  # [low, high]
    min_component_volume_ml: float = 0.01
    smoothing_sigma_mm: float = 0.7  # Gaussian denoising before the HU bands
    # Noise adaptation (lungvol.segmentation.noise): noise biases the background opening
    # (a local minimum) down, and ground glass then falls under the region floor (a noise SD
    # of 60 / 100 HU read inserted lesion -21 / -51 %). A scan whose opening bias (normal
    # lung level minus opened background, median) is above opening_bias_target_hu is
    # smoothed first, with the least Gaussian sigma (at most noise_max_smoothing_mm) that
    # brings it down to the target. Clean real lung measures 27-35 HU; clean scans on
    # 1.02-1.05 mm pixels (about 40 HU) and the 1.4 mm phantoms (38 HU) are smoothed by a few
    # tenths of a millimetre. The lesion error follows the bias on every grid measured
    # (session 25). Where the bias cannot be measured (too little lung deep inside), the
    # noise index (15-20 HU on the calibration scans) is brought to noise_target_hu
    # instead. 0 disables each.
    opening_bias_target_hu: float = 36.0
    noise_target_hu: float = 21.0
    noise_max_smoothing_mm: float = 2.0
    # The HU bands see only this fraction of that smoothing's sigma (in quadrature with
    # smoothing_sigma_mm); the background and the parenchyma level see all of it. All of it
    # widens vessel skirts into the ground-glass band, as a soft kernel does (session 25).
    noise_band_fraction: float = 0.5
    # The other end: an index below soft_image_noise_floor_hu means a smooth image (soft
    # reconstruction kernel, or a volume interpolated onto a finer grid), where vessel
    # skirts widen into the ground-glass band and lesion reads high (the real chest
    # blurred in-plane to an index of 9.7 / 8.2 / 7.0 HU: inserted 15 % lesion +9.9 /
    # +11.0 / +15.8 %, the normal chest 0.66 / 1.04 / 1.71 %; session 24). Flagged
    # soft_image_lesion_bias, nothing corrected. 0 disables. Not where the lung's median HU
    # is below soft_image_min_lung_hu: a lung that is mostly air (severe emphysema, values
    # clipped at -1024 HU) has little texture whatever the kernel (the real chest's aerated
    # lung darkened by 200 HU, median -1016 HU in its lung mask: index 5.5, reads 0.27 %).
    soft_image_noise_floor_hu: float = 10.0
    soft_image_min_lung_hu: float = -950.0
    # Background density: grey-level opening with a ball of this radius on a coarse grid;
    # bright structures thinner than the ball (vessels, halos, airway walls) vanish from it.
    # 0 = no background gating (plain HU bands).
    background_radius_mm: float = 4.5
    background_working_spacing_mm: float = 1.5
    # Along the costal pleura (outside voxels within pleural_bone_distance_mm of bone) the
    # lung is continued outward by pleural_extrapolation_mm with the values of lung at least
    # pleural_core_depth_mm deep, so that subpleural bands thinner than the ball keep their
    # background. 0 disables (outside the lung is air everywhere).
    pleural_extrapolation_mm: float = 6.0
    pleural_core_depth_mm: float = 3.5
    pleural_bone_distance_mm: float = 7.0
    bone_min_hu: float = 200.0
    max_above_background_hu: float = 200.0
    # Lesion REGION test: a band voxel is lesion only where the opened background is at
    # least region_min_background_hu AND region_above_parenchyma_hu above the local level of
    # normal (air-filled, < parenchyma_max_hu) lung, in blocks of parenchyma_block_mm.
    # Dependent lung of a supine patient sits near -780 HU with much of it at the
    # ground-glass band's -750 edge; the band still decides each voxel's class.
    region_min_background_hu: float = -720.0
    region_above_parenchyma_hu: float = 110.0
    parenchyma_max_hu: float = -700.0
    parenchyma_block_mm: float = 8.0
    parenchyma_default_hu: float = -850.0  # level when no lung block is normal (diffuse disease)
    # Hysteresis: ground-glass-band voxels connected to ground-glass cores within
    # lesion_extension_mm are ground glass (rims and fingers narrower than the ball) when
    # extension_above_parenchyma_hu above normal lung, and not within
    # extension_vessel_clearance_mm of a rejected vessel / airway wall, and where the
    # grown lesion is at least extension_min_width_mm wide in-plane (skirts of small
    # vessels are narrower; 0 disables). lesion_extension_mm 0 disables the extension.
    # On in-plane voxels wider than extension_vessel_clearance_mm the gate is two voxels
    # beyond the first ring around accepted lesion (lesions._width_gate). Where a gate acts
    # the reach is extension_gated_mm instead: the skirt growth that held it short is gone.
    lesion_extension_mm: float = 5.0
    extension_above_parenchyma_hu: float = 90.0
    extension_vessel_clearance_mm: float = 2.0
    extension_min_width_mm: float = 3.0
    extension_gated_mm: float = 6.5
    # Solid-band structures at least this wide in-plane (an opening with the square of
    # round(width / pixel) pixels, at least 2; 3 on pixels wider than
    # extension_vessel_clearance_mm) are solid components even on a ground-glass
    # background; narrower ones inside ground glass are vessels. 0 disables the test
    # (every solid-band voxel passes it). Until 0.6.5 thin_structure_radius_mm = 1.5 gave
    # odd squares only: 4.9 mm on 0.98 mm pixels but 3.1 mm on 1.02 mm, 5.9 mm on 1.95 mm.
    solid_min_width_mm: float = 4.5
    # Voxels above the solid band enclosed in-plane by lesion (noise peaks, vessels inside
    # a tumour or consolidation) count as solid.
    fill_enclosed_solid: bool = True
    # Thick slices (session 20): where slices are further apart than background_radius_mm
    # (and as thick: the header's SliceThickness when known) the background ball is one
    # slice thick and cannot see a lung surface that faces the next slice (diaphragm dome,
    # apex). A band voxel on such a surface (the next slice
    # outward is outside the lung) whose next slice inward is aerated lung (below the
    # ground-glass band) is partial volume of the wall, not lesion. false disables.
    thick_slice_surface_rule: bool = True
    # Thicker slices that the ball still spans (session 29): on slices thicker than
    # thick_slice_chain_min_mm (the header's SliceThickness when known), a run of band voxels
    # from a lung surface facing the next slice inward into aerated lung, within
    # thick_slice_chain_mm, its HU falling slice by slice, is the wall's partial volume
    # smeared along z: the hysteresis does not grow into it (lesion accepted there on its
    # own stays). 0 disables.
    thick_slice_chain_mm: float = 6.0
    thick_slice_chain_min_mm: float = 2.5
    # Rejected solid-band components (26-connected) whose lung neighbourhood within
    # enclosure_shell_mm is at least this fraction ground-glass lesion are solid (solid
    # patches narrower than the ball inside ground glass; vessels continue into normal
    # lung). > 1 disables.
    enclosed_solid_min_ggo_fraction: float = 0.6
    enclosure_shell_mm: float = 3.0
    enclosed_solid_max_length_mm: float = 40.0  # longer components are vessels (tubes)
    # Pleural plaques (session 11): a rejected solid-band component of at least
    # plaque_min_volume_ml, no longer than enclosed_solid_max_length_mm, is solid when at
    # least plaque_min_wall_contact of its surroundings (enclosure_shell_mm) is tissue
    # outside the lung and at least plaque_min_costal_fraction of that tissue lies within
    # pleural_bone_distance_mm of bone (costal pleura, not hila or mediastinum): subpleural
    # consolidation thinner than the ball. > 1 disables.
    plaque_min_wall_contact: float = 0.3
    plaque_min_costal_fraction: float = 0.5
    # ... or, off the costal pleura (diaphragm, mediastinum, spine), when its mean HU (the
    # CT's own values) is at least plaque_dense_min_hu: consolidation against those walls is
    # dense, the partial-volume strip along an aerated lung's edge is not (-130 to -240 HU
    # on the real normal chest; session 28). Above the solid band's high edge disables.
    plaque_dense_min_hu: float = -100.0
    # ... on in-plane pixels of at most this (mm) only: on coarser pixels a rim voxel of the
    # lung mask against the mediastinum is mostly tissue and reads dense (the 2.8 mm
    # phantoms: the lesion-free one 0.38 -> 0.51 %, the simulated trial's heaviest scan
    # +0.94 -> +1.02 pp over its truth; the real chest on 1.95 mm pixels reads normal).
    plaque_dense_max_pixel_mm: float = 2.0
    plaque_min_volume_ml: float = 0.05
    # Vessel segments: an accepted solid component (26-connected) is a vessel wider than the
    # ball (hilar and lobar vessels, their junctions), not lesion, when the lung in the ring
    # from vessel_shell_mm to vessel_ring_mm around it is less than vessel_max_ggo_fraction
    # ground-glass lesion (it lies in normal lung), at least vessel_min_continuation_fraction
    # of its shell of vessel_shell_mm is tissue at or above the solid band's low edge that is
    # not solid lesion (the tube continues), its longest principal axis is at least
    # vessel_min_elongation times the second (a tube, not a round nodule) and no voxel is
    # deeper than vessel_max_radius_mm inside it (tumours and consolidations are thicker).
    # Its ground-glass skirt in the shell goes with it. vessel_max_radius_mm = 0 disables.
    vessel_max_radius_mm: float = 8.0
    vessel_min_elongation: float = 2.0
    # Branching vessel trees are not elongated as a whole: a component of at least
    # vessel_tree_min_volume_ml (0 disables) that passes the other vessel tests is a vessel
    # tree when at most vessel_tree_max_wall_contact of its surroundings (vessel_shell_mm) is
    # tissue outside the lung (lesion that size reaches the pleura; a tree lies inside).
    vessel_tree_min_volume_ml: float = 2.0
    vessel_tree_max_wall_contact: float = 0.1
    vessel_shell_mm: float = 2.0
    vessel_ring_mm: float = 4.0
    vessel_max_ggo_fraction: float = 0.25
    vessel_min_continuation_fraction: float = 0.03

    def __post_init__(self) -> None:
        object.__setattr__(self, "ggo_band_hu", tuple(float(v) for v in self.ggo_band_hu))
        object.__setattr__(self, "solid_band_hu", tuple(float(v) for v in self.solid_band_hu))
        _check_band("lesions.ggo_band_hu", self.ggo_band_hu)
        _check_band("lesions.solid_band_hu", self.solid_band_hu)
        if self.min_component_volume_ml < 0:
            raise ConfigError("lesions.min_component_volume_ml must be >= 0")
        if self.background_radius_mm < 0 or self.background_working_spacing_mm <= 0:
            raise ConfigError(
                f"lesions.background_radius_mm must be >= 0 (got {self.background_radius_mm}) "
                f"and lesions.background_working_spacing_mm > 0 "
                f"(got {self.background_working_spacing_mm})"
            )
        if self.enclosed_solid_min_ggo_fraction < 0 or self.enclosure_shell_mm <= 0:
            raise ConfigError(
                "lesions.enclosed_solid_min_ggo_fraction must be >= 0 (got "
                f"{self.enclosed_solid_min_ggo_fraction}; > 1 disables) and "
                f"lesions.enclosure_shell_mm > 0 (got {self.enclosure_shell_mm})"
            )
        for key in (
            "pleural_extrapolation_mm", "pleural_core_depth_mm", "pleural_bone_distance_mm",
            "lesion_extension_mm", "extension_vessel_clearance_mm", "extension_min_width_mm",
            "extension_gated_mm", "opening_bias_target_hu", "noise_target_hu",
            "noise_max_smoothing_mm",
            "soft_image_noise_floor_hu", "vessel_max_radius_mm", "solid_min_width_mm",
        ):
            if getattr(self, key) < 0:
                raise ConfigError(f"lesions.{key} must be >= 0 (got {getattr(self, key)})")
        if not 0 <= self.noise_band_fraction <= 1:
            raise ConfigError(
                f"lesions.noise_band_fraction must be in [0, 1] (got {self.noise_band_fraction})"
            )
        if self.parenchyma_block_mm <= 0:
            raise ConfigError(
                f"lesions.parenchyma_block_mm must be > 0 (got {self.parenchyma_block_mm})"
            )
        if self.vessel_min_elongation < 1:
            raise ConfigError(
                f"lesions.vessel_min_elongation must be >= 1 (got {self.vessel_min_elongation})"
            )
        if not 0 < self.vessel_shell_mm < self.vessel_ring_mm:
            raise ConfigError(
                f"lesions.vessel_shell_mm ({self.vessel_shell_mm}) must be > 0 and less than "
                f"lesions.vessel_ring_mm ({self.vessel_ring_mm})"
            )
        if self.vessel_tree_min_volume_ml < 0:
            raise ConfigError(
                "lesions.vessel_tree_min_volume_ml must be >= 0 (got "
                f"{self.vessel_tree_min_volume_ml}; 0 disables)"
            )
        if self.thick_slice_chain_mm < 0 or self.thick_slice_chain_min_mm < 0:
            raise ConfigError(
                "lesions.thick_slice_chain_mm and lesions.thick_slice_chain_min_mm must be >= 0 "
                f"(got {self.thick_slice_chain_mm}, {self.thick_slice_chain_min_mm}; 0 disables)"
            )
        if self.plaque_dense_max_pixel_mm <= 0:
            raise ConfigError(
                "lesions.plaque_dense_max_pixel_mm must be > 0 (got "
                f"{self.plaque_dense_max_pixel_mm})"
            )
        if self.plaque_min_wall_contact < 0 or self.plaque_min_volume_ml < 0:
            raise ConfigError(
                "lesions.plaque_min_wall_contact must be >= 0 (got "
                f"{self.plaque_min_wall_contact}; > 1 disables) and "
                f"lesions.plaque_min_volume_ml >= 0 (got {self.plaque_min_volume_ml})"
            )
        for key in (
            "vessel_max_ggo_fraction", "vessel_min_continuation_fraction",
            "vessel_tree_max_wall_contact", "plaque_min_costal_fraction",
        ):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(
                    f"lesions.{key} must be a fraction in [0, 1] (got {getattr(self, key)})"
                )


@dataclass(frozen=True)
class SubpleuralConfig:
    """Subpleural consolidation layer left between the lung mask and the ribs
    (lungvol.segmentation.subpleural; docs/segmentation.md, "A subpleural consolidation
    layer")."""

    enabled: bool = True  # measure the costal gap (and flag)
    recover: bool = True  # when flagged, add the layer to the lung and lesion masks
    # Session 16: solid lesion on the mask's surface against tissue of the solid band gets
    # one in-plane voxel of that tissue (the partial-volume layer an aerated surface keeps).
    solid_shell: bool = True
    tissue_min_hu: float = -300.0  # outside the mask at or above: tissue (the surface faces it)
    costal_bone_distance_mm: float = 20.0  # costal surface: this close to bone
    window_mm: float = 20.0  # nearest rib passing: smallest gap over this window
    # Flag (and recover) when the lesion-facing costal surface lies this much further from
    # the ribs than the aerated one, on at least this fraction of the costal surface.
    # Measured (session 14, 2 mm grid): real normal chest -1.15 mm, inserted lesions and
    # blobs -1.15..0.00, ground-glass bands +0.50 / +0.96, phantoms at most +1.16, the IBSI
    # NSCLC crop +1.61; consolidation layers 4 / 6 mm thick +4.40 / +6.36.
    min_excess_mm: float = 2.5
    min_lesion_fraction: float = 0.05
    min_aerated_fraction: float = 0.1  # less aerated costal surface: use reference_gap_mm ...
    # ... and flag without adding anything (a default wall thickness is no measurement)
    reference_gap_mm: float = 3.5  # the real normal chest's aerated costal gap (median)
    max_layer_mm: float = 15.0  # at most this much is grown outward
    # Flag only (session 14): the posterior costal surface this much further from the ribs
    # than the anterior one: a dependent layer with aerated lung inside it, which the
    # lesion-facing test cannot see. Measured: real normal chest +1.6 mm, NSCLC crop +2.4,
    # lung1 / lung2 0.0 / -1.9, phantoms 0.0; 4 / 6 mm posterior layers +4.3 / +5.5 mm.
    min_dependent_excess_mm: float = 3.5
    layer_hu: tuple[float, float] = (-750.0, 100.0)  # smoothed HU the grown layer may have
    # Flag only (session 15): dependent opacity thicker than the costal test's reach. Per
    # lung, the median over the mid-thorax slices (lung area >= posterior_gap_min_area_fraction
    # of the largest) of the distance from the lung's most posterior voxel in each
    # left-right column to the first bone behind it (nearest rib passing: smallest over
    # window_mm in z). Measured: real normal chest 7.8 mm, lung1 / lung2 2.3 / 1.9, phantom
    # 2.8, NSCLC crop 14.7; posterior half of both lungs consolidated 76 mm; dependent
    # layers of 15 / 25 mm 23.4 / 33.2 mm.
    max_posterior_gap_mm: float = 20.0
    posterior_gap_min_area_fraction: float = 0.3
    # Flag only (session 18): the same towards the front, from the lung's most anterior
    # voxel to the last bone in front of it (anterior ribs, sternum). Measured: real normal
    # chest 2.0 / 9.8 mm, lung1 / lung2 2.3 / 3.8, NSCLC crop 5.9, phantoms 2.8; the anterior
    # upper lobes consolidated 52 / 36 mm, a 15 mm anterior layer 18 / 23 mm.
    max_anterior_gap_mm: float = 20.0
    # The same flag (session 19) when the right lung's anterior gap, median over the lower
    # half of those slices and the lateral half of the lung, reaches this: a consolidated
    # middle lobe beside the heart (the real chest with 441 / 216 mL of it at +30 HU: 56.6 /
    # 23.4 mm; normal right lungs here 2.0-5.9 mm). Not on the left, where the heart's apex
    # lies in front of the lower lung and an enlarged heart reaches the lateral chest wall
    # (normal left lungs here 1.9-5.9 mm; a lingula-like 117 mL at +30 HU 48.8 mm; the
    # full-resolution prototype read the real chest's left 28.8 mm). 0 disables.
    max_anterior_lower_gap_mm: float = 20.0
    # The left lung's own flag (session 25), a warning that keeps the normal-CT call: there
    # an enlarged heart can lie between the lower lateral lung and the ribs as a consolidated
    # lingula does, and no scan here tells them apart (normal left lungs here 1.9-5.9 mm,
    # phantoms 2.8; the real chest's lingula-like 117 mL at +30 HU 48.8 mm). 0 disables.
    max_anterior_lower_gap_left_mm: float = 30.0
    posterior_search_mm: float = 150.0  # ribs are looked for this far behind the lungs
    # The estimate of the opacity behind a flagged lung (not added; session 16) skips columns
    # whose lung ends this far in front of the slice's median posterior lung surface.
    dependent_level_tolerance_mm: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_hu", tuple(float(v) for v in self.layer_hu))
        _check_band("subpleural.layer_hu", self.layer_hu)
        for key in (
            "costal_bone_distance_mm", "window_mm", "min_excess_mm", "reference_gap_mm",
            "max_layer_mm", "min_dependent_excess_mm", "max_posterior_gap_mm",
            "max_anterior_gap_mm", "posterior_search_mm", "dependent_level_tolerance_mm",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(f"subpleural.{key} must be > 0 (got {getattr(self, key)})")
        if self.max_anterior_lower_gap_left_mm < 0:
            raise ConfigError(
                "subpleural.max_anterior_lower_gap_left_mm must be >= 0 (0 disables), got "
                f"{self.max_anterior_lower_gap_left_mm}"
            )
        if self.max_anterior_lower_gap_mm < 0:
            raise ConfigError(
                "subpleural.max_anterior_lower_gap_mm must be >= 0 (0 disables), got "
                f"{self.max_anterior_lower_gap_mm}"
            )
        for key in ("min_lesion_fraction", "min_aerated_fraction",
                    "posterior_gap_min_area_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(
                    f"subpleural.{key} must be a fraction in [0, 1] (got {getattr(self, key)})"
                )


@dataclass(frozen=True)
class QuantificationConfig:
    """Metrics, normal-CT rule and QC flags."""

    normal_ct_max_lesion_pct: float = 1.0  # normal CT when lesion proportion < this
    lung_hu_percentiles: tuple[float, ...] = (5.0, 25.0, 50.0, 75.0, 95.0)
    plausible_lung_volume_ml: tuple[float, float] = (1500.0, 9000.0)
    max_slice_spacing_mm: float = 5.0  # QC flag when slices are thicker/farther apart
    # QC flag when slices are thicker/farther apart than this: partial volume smears vessels
    # into the lesion HU bands (a normal chest reads 0.9 % lesion at 2 mm, 1.4 % at 3 mm).
    lesion_bias_slice_mm: float = 2.5
    edge_margin_slices: int = 1  # lungs touching the first/last slices -> "lungs cut off"
    edge_touch_min_fraction: float = 0.002  # of lung voxels on an edge slice before flagging
    # Lung contact with an in-plane image border (mm2) before lungs_cut_off_in_plane.
    edge_touch_min_area_mm2: float = 100.0
    # QC flag when the larger lung exceeds the smaller by more than this ratio (normal ~1.1-1.3).
    max_right_left_volume_ratio: float = 2.0
    # QC flag when at least air_pocket_min_ml of the lung mask is air without lung tissue
    # (blocks of air_pocket_block_mm with a mean below air_pocket_max_hu): a pneumothorax is
    # internal air and is taken into the lung mask. Normal real scans here: 0-0.3 mL.
    air_pocket_max_hu: float = -970.0
    air_pocket_block_mm: float = 2.0
    air_pocket_min_ml: float = 30.0
    # Solid lesion in the lung mask's outer voxel layer next to soft tissue (at or above
    # surface_tissue_min_hu, i.e. not air): there lesion and chest wall, diaphragm or
    # mediastinum have the same HU and the lung boundary is invisible. QC flag from
    # surface_solid_flag_min_ml AND surface_solid_flag_min_fraction of the solid volume
    # (session 9: inserted solid 5-30 % 22-24 % of it, 11-57 mL; normal chest 0.7 mL;
    # inserted blobs 7-11 %).
    surface_tissue_min_hu: float = -300.0
    surface_solid_flag_min_ml: float = 10.0
    surface_solid_flag_min_fraction: float = 0.15
    # Lung base (session 18): per lung, the craniocaudal distance from its base (the lowest
    # slice holding at least base_min_area_fraction of its largest slice's area) up to the
    # lowest slice holding base_half_area_fraction of it. The diaphragm's dome makes a
    # normal lung taper over several centimetres (measured: real chest 46 / 36 mm, lung2
    # 45 / 30, NSCLC crop 51, phantoms 33-38); a base consolidated flat across (lobar
    # pneumonia against the liver, a subpulmonic effusion) leaves the mask cut off square
    # (0-2 mm). QC flag lung_base_truncated below min_base_taper_mm.
    base_min_area_fraction: float = 0.01
    base_half_area_fraction: float = 0.5
    min_base_taper_mm: float = 10.0
    # Lung density (session 18): QC flag lung_density_high when the density_percentile-th
    # percentile of lung HU is above density_flag_min_hu: no normally aerated lung is left
    # (diffuse ground glass) or the scan is at poor inspiration. Lesion is measured above the
    # lung's own density, so diffuse ground glass reads low. Measured 10th percentiles: real
    # scans -884..-922 HU, phantoms -870..-877, insertions up to 50 % -862..-888; the real
    # chest's aerated lung raised evenly by 100 / 200 HU: -788 / -691 (lesion 0.60 / 13.4 %).
    density_percentile: float = 10.0
    density_flag_min_hu: float = -830.0
    # Metal (session 19): voxels of at least metal_min_hu in 26-connected components of at
    # least metal_min_component_ml (wires, leads, a pacemaker, spinal hardware; cortical
    # bone stays below about 2000 HU, an ECG electrode is smaller). Its streaks run across
    # the whole axial slice, so what it can affect is the lung in the slices it lies in: QC
    # flag metal_near_lungs when those slices hold at least metal_flag_min_lung_pct of the
    # lung. Real scans here: none. lung1's 1.2 mL of metal above the lungs (neck and jaw
    # slices) shares one slice with 0.02 % of its lung, the apex; the real chest's two
    # specks are 0.01 mL each.
    metal_min_hu: float = 2500.0
    metal_min_component_ml: float = 0.05
    metal_flag_min_lung_pct: float = 1.0
    # Block-phase check (opt-in; `lungvol segment --phase-check`): the scan is segmented
    # again with the block lattice of both stages shifted by these CT-voxel offsets
    # (z, y, x), as the anatomy shifts against it from one visit to the next, and the
    # spread of the numbers is reported (metrics.json "phase_check"). The reported masks
    # and volumes stay those of offset (0, 0, 0). Flags: phase_sensitive when the lesion
    # proportion spans more than phase_flag_lesion_range_pp, or the solid volume more than
    # phase_flag_solid_range_ml AND phase_flag_solid_range_fraction of its median, or the
    # lung volume more than phase_flag_lung_range_fraction of its median;
    # normal_ct_phase_unstable when the normal-CT call differs between phases. Set on the
    # default four phases (session 13): real chest (2 mm slices) lesion 0.15 pp, solid 3.0 mL
    # of 12 mL, lung 0.15 %: no flag; pyradiomics lung1 (5 mm) lesion 0.51 pp, solid 7.6 mL
    # of 12 mL: flagged; the IBSI NSCLC crop, lung 1090-1261 mL: flagged.
    phase_check: bool = False
    phase_check_offsets_voxels: tuple[tuple[int, int, int], ...] = (
        (0, 0, 1), (0, 1, 0), (0, 1, 1),
    )
    phase_flag_lesion_range_pp: float = 0.5
    phase_flag_solid_range_ml: float = 5.0
    phase_flag_solid_range_fraction: float = 0.25
    phase_flag_lung_range_fraction: float = 0.02

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "lung_hu_percentiles", tuple(float(v) for v in self.lung_hu_percentiles)
        )
        offsets = []
        for off in self.phase_check_offsets_voxels:
            values = tuple(off) if isinstance(off, (list, tuple)) else (off,)
            if (
                len(values) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
                or min(values) < 0
                or not any(values)
            ):
                raise ConfigError(
                    "quantification.phase_check_offsets_voxels must be a list of [z, y, x] "
                    f"offsets of non-negative integers, not all 0; got {off!r}"
                )
            offsets.append(values)
        if self.phase_check and not offsets:
            raise ConfigError(
                "quantification.phase_check needs at least one phase_check_offsets_voxels entry"
            )
        object.__setattr__(self, "phase_check_offsets_voxels", tuple(offsets))
        for name in (
            "phase_flag_lesion_range_pp", "phase_flag_solid_range_ml",
            "phase_flag_solid_range_fraction", "phase_flag_lung_range_fraction",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"quantification.{name} must be >= 0, got {getattr(self, name)}")
        object.__setattr__(
            self,
            "plausible_lung_volume_ml",
            tuple(float(v) for v in self.plausible_lung_volume_ml),
        )
        _check_band("quantification.plausible_lung_volume_ml", self.plausible_lung_volume_ml)
        if self.normal_ct_max_lesion_pct < 0:
            raise ConfigError("quantification.normal_ct_max_lesion_pct must be >= 0")
        for name in ("max_slice_spacing_mm", "lesion_bias_slice_mm", "air_pocket_block_mm"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"quantification.{name} must be > 0, got {getattr(self, name)}")
        if self.max_right_left_volume_ratio < 1.0:
            raise ConfigError(
                "quantification.max_right_left_volume_ratio must be >= 1, got "
                f"{self.max_right_left_volume_ratio}"
            )
        if self.surface_solid_flag_min_ml < 0:
            raise ConfigError(
                "quantification.surface_solid_flag_min_ml must be >= 0, got "
                f"{self.surface_solid_flag_min_ml}"
            )
        if not 0.0 <= self.surface_solid_flag_min_fraction <= 1.0:
            raise ConfigError(
                "quantification.surface_solid_flag_min_fraction must be in [0, 1], got "
                f"{self.surface_solid_flag_min_fraction}"
            )
        if not 0.0 < self.base_min_area_fraction < self.base_half_area_fraction <= 1.0:
            raise ConfigError(
                "quantification.base_min_area_fraction and base_half_area_fraction must satisfy "
                f"0 < min < half <= 1, got {self.base_min_area_fraction} and "
                f"{self.base_half_area_fraction}"
            )
        if not 0.0 <= self.density_percentile <= 100.0:
            raise ConfigError(
                "quantification.density_percentile must be in [0, 100], got "
                f"{self.density_percentile}"
            )
        if self.metal_min_component_ml < 0 or self.metal_flag_min_lung_pct < 0:
            raise ConfigError(
                "quantification.metal_min_component_ml and metal_flag_min_lung_pct must be "
                f">= 0, got {self.metal_min_component_ml} and {self.metal_flag_min_lung_pct}"
            )
        if self.min_base_taper_mm < 0:
            raise ConfigError(
                f"quantification.min_base_taper_mm must be >= 0, got {self.min_base_taper_mm}"
            )


@dataclass(frozen=True)
class OutputConfig:
    """What the per-scan output folder holds."""

    qc_png: bool = True
    qc_dpi: int = 110


@dataclass(frozen=True)
class LungvolConfig:
    io: IOConfig = field(default_factory=IOConfig)
    lungs: LungSegmentationConfig = field(default_factory=LungSegmentationConfig)
    lesions: LesionSegmentationConfig = field(default_factory=LesionSegmentationConfig)
    subpleural: SubpleuralConfig = field(default_factory=SubpleuralConfig)
    quantification: QuantificationConfig = field(default_factory=QuantificationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: str = "<defaults>"  # where it was loaded from (not hashed)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    @property
    def hash(self) -> str:
        """sha256 of the resolved config (canonical JSON), first 16 hex digits."""
        return content_hash(self.to_dict())


_SECTIONS: dict[str, type] = {
    "io": IOConfig,
    "lungs": LungSegmentationConfig,
    "lesions": LesionSegmentationConfig,
    "subpleural": SubpleuralConfig,
    "quantification": QuantificationConfig,
    "output": OutputConfig,
}


# Keys that a release replaced: (section, old key) -> what to write instead. A config
# written for an older lungvol is refused with this, not only "unknown key".
_REPLACED_KEYS: dict[tuple[str, str], str] = {
    ("lesions", "thin_structure_radius_mm"): (
        "lesions.solid_min_width_mm since lungvol 0.6.6: a width, not a radius (the least "
        "in-plane width of solid inside ground glass; 4.5 mm by default; 0 disables)"
    ),
}


def _build_section(cls: type, values: Any, *, where: str, section: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: section '{section}' must be a mapping, got {values!r}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    for key in unknown:
        if (section, key) in _REPLACED_KEYS:
            raise ConfigError(
                f"{where}: '{section}.{key}' was replaced by "
                f"{_REPLACED_KEYS[(section, key)]}; edit the config"
            )
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} in '{section}'; valid keys: {sorted(valid)}"
        )
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**converted)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    except TypeError as err:
        raise ConfigError(f"{where}: bad value in '{section}': {err}") from err


def config_from_dict(data: dict[str, Any], *, where: str = "<dict>") -> LungvolConfig:
    """Build a validated config from a (YAML-shaped) dict; missing keys take defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown section(s) {unknown}; valid sections: {sorted(_SECTIONS)}"
        )
    sections = {
        name: _build_section(cls, data.get(name), where=where, section=name)
        for name, cls in _SECTIONS.items()
    }
    return LungvolConfig(**sections, source=where)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently,
    so a config edited twice would run with a value nobody chose)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file (config or trial); ConfigError for invalid YAML or a duplicate key."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: {err.problem}{where}; fix the file") from err
    except yaml.YAMLError as err:
        raise ConfigError(
            f"{path}: not valid YAML ({err.__class__.__name__}); fix the file"
        ) from err


def with_phase_check(config: LungvolConfig) -> LungvolConfig:
    """``config`` with ``quantification.phase_check`` on (the CLIs' ``--phase-check``); the
    change is part of the config and of its hash, like any other setting."""
    if config.quantification.phase_check:
        return config
    return dataclasses.replace(
        config, quantification=dataclasses.replace(config.quantification, phase_check=True)
    )


def load_config(path: str | Path | None = None) -> LungvolConfig:
    """Load a YAML config; ``None`` loads the packaged default (same as configs/default.yaml)."""
    p = Path(path) if path is not None else PACKAGED_DEFAULT
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing YAML file")
    return config_from_dict(read_yaml(p) or {}, where=str(p))
