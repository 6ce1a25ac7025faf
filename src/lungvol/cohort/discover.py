"""Cohort folder + manifest -> the scans to segment (one :class:`ScanJob` per subject x visit).

Layout: ``COHORT/<subject>/<scan>/`` holds one DICOM series or one volume file
(.nii, .nii.gz, .nrrd, .mha). The manifest (``COHORT/manifest.csv`` unless given) is a CSV with
the columns

- ``subject`` (required): the trial's subject ID; also the subject's folder name;
- ``arm`` (required): one of the trial's arm names;
- ``scan``: the scan's folder name under the subject folder (default: the visit name);
- ``visit``: a visit name from the trial file, or
- ``scan_date`` (YYYY-MM-DD or YYYYMMDD): the visit is then the one whose window holds the day;
- ``day``: days since day 0 (instead of a date);
- ``reference_date``: the subject's day 0 (randomisation). Without it, day 0 is the date of the
  subject's earliest scan.

A row with only ``subject`` and ``arm`` declares a subject; its scan folders are then found on
disk and named by visit (``month3``) or by date (``2020-03-04``).

Manifest errors (missing columns, unknown arm, duplicate rows, a subject with two arms, scan
folders for a subject that is not in the manifest, a listed folder that does not exist) raise
:class:`~lungvol.errors.CohortError`. Gaps in one subject's data (no scans, no baseline, two
scans in one visit window, a scan outside every window) are returned as :class:`CohortIssue`
and reported; the rule for two scans in one window is: the scan closest to the visit's nominal
day is used, on a tie the earlier one, and the other is reported.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lungvol.cohort.trial import TrialConfig
from lungvol.errors import CohortError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
REQUIRED_COLUMNS = ("subject", "arm")
OPTIONAL_COLUMNS = ("scan", "visit", "scan_date", "day", "reference_date")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ScanJob:
    """One scan to segment: who, which arm, which visit, which day, and where the input is."""

    subject: str
    arm: str
    visit: str
    day: int  # days since day 0; the nominal day when only the visit is known
    path: str  # DICOM folder or volume file
    scan: str  # folder name under the subject folder
    scan_date: str = ""  # ISO date when known
    is_day_nominal: bool = False

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.visit}"


@dataclass(frozen=True)
class CohortIssue:
    """A problem with one subject's data that does not stop the cohort."""

    subject: str
    kind: str  # no_scans | no_baseline | duplicate_in_window | outside_windows | ...
    message: str
    scan: str = ""


@dataclass(frozen=True)
class Cohort:
    """Discovered scans, the subjects' arms (from the manifest) and issues found on the way."""

    jobs: tuple[ScanJob, ...]
    arms: dict[str, str]  # subject -> arm, every subject of the manifest
    issues: tuple[CohortIssue, ...]
    root: str

    def jobs_for(self, subject: str) -> list[ScanJob]:
        return [j for j in self.jobs if j.subject == subject]


@dataclass(frozen=True)
class _Row:
    line: int
    subject: str
    arm: str
    scan: str
    visit: str
    scan_date: dt.date | None
    day: int | None
    reference_date: dt.date | None

    @property
    def is_scan_row(self) -> bool:
        return bool(self.scan or self.visit or self.scan_date or self.day is not None)


def parse_date(text: str, *, where: str) -> dt.date:
    """Parse YYYY-MM-DD or YYYYMMDD; raise CohortError naming ``where`` otherwise."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    raise CohortError(f"{where}: date {text!r} is not YYYY-MM-DD or YYYYMMDD; fix the manifest")


def _date_or_none(text: str) -> dt.date | None:
    try:
        return parse_date(text, where="")
    except CohortError:
        return None


# Delimiters a spreadsheet writes for "CSV": comma, and semicolon where the comma is the
# decimal separator (European Excel); tab for a pasted or "text" export.
_DELIMITERS = (",", ";", "\t")


def read_csv_table(
    path: Path, required: Sequence[str], *, what: str
) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows (keys and values stripped) of a small CSV table written by hand or by a
    spreadsheet: UTF-8 with or without BOM, comma-, semicolon- or tab-separated (the
    delimiter is the first of those in the header line; csv.Sniffer also guesses from the
    data, which misreads tables of one column or of dates).

    Raises
    ------
    CohortError
        A required column is missing (the message shows the header as read).
    """
    with path.open(newline="", encoding="utf-8-sig") as fh:
        first = fh.readline()
        fh.seek(0)
        delimiter = next((d for d in _DELIMITERS if d in first), ",")
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise CohortError(
                f"{path}: missing column(s) {missing} in this {what}; header is {header} "
                f"(comma-, semicolon- or tab-separated, with a header row)"
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    return header, rows


def read_manifest(path: str | Path, trial: TrialConfig) -> list[_Row]:
    """Read and check the manifest CSV (columns, arms, duplicates, one arm per subject)."""
    p = Path(path)
    if not p.is_file():
        raise CohortError(
            f"manifest {p} not found; put manifest.csv in the cohort folder or pass --manifest"
        )
    header, raw_rows = read_csv_table(p, REQUIRED_COLUMNS, what="manifest")
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise CohortError(
            f"{p}: unknown column(s) {unknown}; valid columns: "
            f"{list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}"
        )
    rows: list[_Row] = []
    seen: dict[tuple[str, ...], int] = {}
    arm_of: dict[str, tuple[str, int]] = {}
    for i, r in enumerate(raw_rows, start=2):
        where = f"{p} line {i}"
        subject, arm = r.get("subject", ""), r.get("arm", "")
        if not subject:
            raise CohortError(f"{where}: empty subject; every row needs a subject ID")
        if not _SAFE_NAME.match(subject):
            raise CohortError(
                f"{where}: subject ID {subject!r} is not usable as a folder name; use letters, "
                "digits, '.', '_' or '-'"
            )
        if arm not in trial.arm_names:
            raise CohortError(
                f"{where}: unknown arm {arm!r} for subject {subject}; the trial's arms are "
                f"{list(trial.arm_names)}"
            )
        if subject in arm_of and arm_of[subject][0] != arm:
            raise CohortError(
                f"{where}: subject {subject} is in arm {arm!r} here but {arm_of[subject][0]!r} on "
                f"line {arm_of[subject][1]}; one subject has one arm"
            )
        arm_of.setdefault(subject, (arm, i))
        visit = r.get("visit", "")
        if visit and visit not in trial.visit_names:
            raise CohortError(
                f"{where}: unknown visit {visit!r}; visits are {list(trial.visit_names)}"
            )
        day_text = r.get("day", "")
        try:
            day = int(day_text) if day_text else None
        except ValueError as err:
            raise CohortError(f"{where}: day {day_text!r} is not a whole number of days") from err
        row = _Row(
            line=i,
            subject=subject,
            arm=arm,
            scan=r.get("scan", ""),
            visit=visit,
            scan_date=parse_date(r["scan_date"], where=where) if r.get("scan_date") else None,
            day=day,
            reference_date=(
                parse_date(r["reference_date"], where=where) if r.get("reference_date") else None
            ),
        )
        if row.scan and not _SAFE_NAME.match(row.scan):
            raise CohortError(f"{where}: scan folder name {row.scan!r} is not a plain folder name")
        identity = (subject, row.scan or row.visit or str(row.scan_date or ""), str(row.day))
        if not row.is_scan_row:
            identity = (subject, "<subject>")
        if identity in seen:
            raise CohortError(
                f"{where}: duplicate row for subject {subject} (same as line {seen[identity]}); "
                "remove one of them"
            )
        seen[identity] = i
        rows.append(row)
    if not rows:
        raise CohortError(f"{p}: the manifest has no rows; list one row per subject or per scan")
    return rows


def scan_input(folder: Path) -> Path | None:
    """The reader input inside a scan folder: one volume file, else the folder (DICOM).

    Returns None for an empty folder.
    """
    files = [f for f in folder.iterdir() if not f.name.startswith(".")]
    if not files:
        return None
    volumes = [f for f in files if f.is_file() and f.name.lower().endswith(VOLUME_SUFFIXES)]
    if len(volumes) == 1 and not any(f.suffix.lower() == ".dcm" for f in files):
        return volumes[0]
    return folder


def _subject_folders(root: Path) -> dict[str, Path]:
    return {
        d.name: d
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith((".", "_"))
    }


def discover_cohort(
    root: str | Path, trial: TrialConfig, *, manifest: str | Path | None = None
) -> Cohort:
    """Match the manifest with the folders of ``root`` and assign each scan to a visit.

    Raises
    ------
    CohortError
        For manifest errors (see the module docstring). Subject-level gaps are returned as
        issues instead.
    """
    if not Path(root).is_dir():
        raise CohortError(f"cohort folder {root} does not exist or is not a folder")
    root = Path(root).resolve()  # absolute: workers (processes, Dask) may run elsewhere
    rows = read_manifest(Path(manifest) if manifest else root / MANIFEST_NAME, trial)
    arms = {r.subject: r.arm for r in rows}
    folders = _subject_folders(root)
    strangers = sorted(set(folders) - set(arms))
    if strangers:
        shown = ", ".join(strangers[:5]) + (" ..." if len(strangers) > 5 else "")
        raise CohortError(
            f"{root}: {len(strangers)} subject folder(s) with scans are not in the manifest "
            f"({shown}); add them to the manifest with their arm or move them out"
        )
    issues: list[CohortIssue] = []
    jobs: list[ScanJob] = []
    for subject, arm in arms.items():
        subject_rows = [r for r in rows if r.subject == subject and r.is_scan_row]
        reference = next(
            (r.reference_date for r in rows if r.subject == subject and r.reference_date), None
        )
        folder = folders.get(subject)
        candidates = _candidates(subject, folder, subject_rows, trial, issues, root=root)
        if not candidates:
            issues.append(
                CohortIssue(
                    subject, "no_scans", f"subject {subject} is in the manifest but has no scans"
                )
            )
            continue
        jobs.extend(_assign_visits(subject, arm, candidates, reference, trial, issues))
    jobs.sort(key=lambda j: (j.subject, j.day))
    for issue in issues:
        logger.warning("%s", issue.message)
    return Cohort(jobs=tuple(jobs), arms=arms, issues=tuple(issues), root=str(root))


@dataclass(frozen=True)
class _Candidate:
    scan: str
    path: Path
    visit: str
    scan_date: dt.date | None
    day: int | None


def _candidates(
    subject: str,
    folder: Path | None,
    subject_rows: list[_Row],
    trial: TrialConfig,
    issues: list[CohortIssue],
    *,
    root: Path,
) -> list[_Candidate]:
    """Scan folders of one subject with what the manifest (or the folder name) says about them."""
    out: list[_Candidate] = []
    on_disk = {d.name: d for d in sorted(folder.iterdir()) if d.is_dir()} if folder else {}
    if subject_rows:
        listed = set()
        for r in subject_rows:
            name = r.scan or r.visit
            if not name:
                raise CohortError(
                    f"manifest line {r.line}: subject {subject} has a scan_date/day but no 'scan' "
                    "folder name; add the scan column"
                )
            listed.add(name)
            if name not in on_disk:
                raise CohortError(
                    f"manifest line {r.line}: scan folder {root / subject / name} does not exist; "
                    "fix the manifest or the folder name"
                )
            out.append(_Candidate(name, on_disk[name], r.visit, r.scan_date, r.day))
        for name in sorted(set(on_disk) - listed):
            issues.append(
                CohortIssue(
                    subject,
                    "unlisted_folder",
                    f"subject {subject}: folder {name!r} is not in the manifest and was ignored",
                    scan=name,
                )
            )
    else:
        for name, path in on_disk.items():
            if name in trial.visit_names:
                out.append(_Candidate(name, path, name, None, None))
            elif (date := _date_or_none(name)) is not None:
                out.append(_Candidate(name, path, "", date, None))
            else:
                issues.append(
                    CohortIssue(
                        subject,
                        "unlisted_folder",
                        f"subject {subject}: folder {name!r} is neither a visit name nor a date; "
                        "list it in the manifest",
                        scan=name,
                    )
                )
    usable = []
    for c in out:
        if scan_input(c.path) is None:
            issues.append(
                CohortIssue(
                    subject,
                    "empty_folder",
                    f"subject {subject}: scan folder {c.scan!r} is empty",
                    scan=c.scan,
                )
            )
        else:
            usable.append(c)
    return usable


def _assign_visits(
    subject: str,
    arm: str,
    candidates: list[_Candidate],
    reference: dt.date | None,
    trial: TrialConfig,
    issues: list[CohortIssue],
) -> list[ScanJob]:
    dates = [c.scan_date for c in candidates if c.scan_date is not None]
    day0 = reference or (min(dates) if dates else None)
    by_visit: dict[str, list[ScanJob]] = {}
    for c in candidates:
        if c.day is not None:
            day, nominal = c.day, False
        elif c.scan_date is not None and day0 is not None:
            day, nominal = (c.scan_date - day0).days, False
        elif c.visit:
            day, nominal = trial.visit(c.visit).nominal_day, True
        else:  # pragma: no cover - a candidate always has a visit, a day or a date
            raise CohortError(f"subject {subject}: scan {c.scan!r} has neither visit nor date")
        if c.visit:
            visit = c.visit
            if not nominal and not trial.visit(visit).contains(day):
                issues.append(
                    CohortIssue(
                        subject,
                        "day_outside_window",
                        f"subject {subject}: scan {c.scan!r} is listed as {visit} but is on day "
                        f"{day}, outside its window {list(trial.visit(visit).window_day)}; kept "
                        "as listed",
                        scan=c.scan,
                    )
                )
        else:
            spec = trial.visit_for_day(day)
            if spec is None:
                issues.append(
                    CohortIssue(
                        subject,
                        "outside_windows",
                        f"subject {subject}: scan {c.scan!r} on day {day} is outside every visit "
                        "window and was not used",
                        scan=c.scan,
                    )
                )
                continue
            visit = spec.name
        job = ScanJob(
            subject=subject,
            arm=arm,
            visit=visit,
            day=int(day),
            path=str(scan_input(c.path)),
            scan=c.scan,
            scan_date=c.scan_date.isoformat() if c.scan_date else "",
            is_day_nominal=nominal,
        )
        by_visit.setdefault(visit, []).append(job)
    chosen: list[ScanJob] = []
    for visit, group in by_visit.items():
        nominal_day = trial.visit(visit).nominal_day
        # The rule for two scans in one window: closest to the nominal day, tie -> earlier.
        group.sort(key=lambda j: (abs(j.day - nominal_day), j.day, j.scan))
        chosen.append(group[0])
        for other in group[1:]:
            issues.append(
                CohortIssue(
                    subject,
                    "duplicate_in_window",
                    f"subject {subject}: scans {group[0].scan!r} (day {group[0].day}) and "
                    f"{other.scan!r} (day {other.day}) are both in the {visit} window; used "
                    f"{group[0].scan!r}, the one closest to day {nominal_day} (tie: earlier)",
                    scan=other.scan,
                )
            )
    if trial.baseline_visit not in by_visit:
        issues.append(
            CohortIssue(
                subject,
                "no_baseline",
                f"subject {subject} has no {trial.baseline_visit} scan; its scans are measured but "
                "it is left out of the change-from-baseline endpoints",
            )
        )
    return chosen
