"""Ground truth of phantom exams: acquisition, findings, and longitudinal change.

Sides are the patient's sides (a right-sided finding is drawn on the image's
left, as on a radiograph). Zones are thirds of the lung height (upper, middle,
lower). `extent` is a unitless size in [0, 1] that drives the drawing: the
fluid height of an effusion, the collapse fraction of a pneumothorax, the
radius of a nodule, the blob radius of a consolidation, and the
cardiothoracic ratio itself for cardiomegaly.

Findings of one exam are kept anatomically consistent (`conflicts`), so that
every finding stays visible: no pneumothorax on the side of an effusion, no
nodule in the zone of a consolidation, no left lower zone lesion hidden by an
enlarged heart.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_pipeline.schema.boxes import Box
from data_pipeline.schema.findings import FINDING_KINDS
from data_pipeline.phantom.config import PhantomConfig, Prevalences

__all__ = [
    "KINDS",
    "SIDES",
    "ZONES",
    "CHANGES",
    "DEVICES",
    "Finding",
    "Acquisition",
    "ExamTruth",
    "LabelledRegion",
    "StudyTruth",
    "conflicts",
    "size_label",
    "sample_acquisition",
    "sample_findings",
    "derive_findings",
]

KINDS = FINDING_KINDS  # sampling order, also the order findings are listed in (data_pipeline.schema.findings)
SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
# Change of a finding from the earlier to the later exam of a pair.
CHANGES = ("new", "resolved", "larger", "smaller", "unchanged")
DEVICES = ("endotracheal tube", "central venous catheter")


@dataclasses.dataclass(frozen=True)
class _ExtentSpec:
    """Size categories (label, low, high) new findings are drawn from; the
    bounds any changed extent must stay in; the step of a larger/smaller change
    (a factor, or an added amount when `additive`); the category threshold."""

    bins: tuple[tuple[str, float, float], ...]
    bounds: tuple[float, float]
    step: tuple[float, float]
    additive: bool = False

    @property
    def threshold(self) -> float | None:
        if len(self.bins) < 2:
            return None
        return 0.5 * (self.bins[0][2] + self.bins[1][1])


_EXTENTS = {
    "pleural_effusion": _ExtentSpec((("small", 0.2, 0.38), ("large", 0.6, 0.95)), (0.2, 0.95), (1.5, 1.9)),
    "pneumothorax": _ExtentSpec((("small", 0.18, 0.27), ("large", 0.42, 0.56)), (0.18, 0.58), (1.45, 1.8)),
    "nodule": _ExtentSpec((("small", 0.2, 0.38), ("large", 0.62, 0.9)), (0.2, 0.9), (1.5, 1.9)),
    "consolidation": _ExtentSpec((("", 0.4, 1.0),), (0.35, 1.0), (1.5, 1.9)),
    "cardiomegaly": _ExtentSpec((("mild", 0.54, 0.58), ("marked", 0.62, 0.66)), (0.54, 0.68), (0.06, 0.09), True),
}
# Half-width of the band around a category threshold that changed extents avoid.
_THRESHOLD_MARGIN = 0.05


def size_label(kind: str, extent: float) -> str:
    """Size category of an extent ("small"/"large", "mild"/"marked"), "" when
    the kind has none."""
    spec = _EXTENTS.get(kind)
    if spec is None or spec.threshold is None:
        return ""
    return spec.bins[0][0] if extent < spec.threshold else spec.bins[1][0]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One ground-truth finding.

    kind: one of KINDS.
    side: "right" | "left" | "bilateral" (effusion only) | "" (cardiomegaly;
        support devices without a central line). For support devices it is
        the side of the central venous catheter.
    zone: "upper" | "middle" | "lower" for consolidation and nodule, else "".
    extent: size in [0, 1] (see the module docstring); 0 for support devices.
    devices: the support devices present (subset of DEVICES), else ().
    place: a fixed offset in [-1, 1]^2 of the drawn position within its zone,
        kept when the finding changes size, so it grows and shrinks in place.
    """

    kind: str
    side: str = ""
    zone: str = ""
    extent: float = 0.0
    devices: tuple[str, ...] = ()
    place: tuple[float, float] = (0.0, 0.0)

    @property
    def size(self) -> str:
        return size_label(self.kind, self.extent)

    @property
    def sides(self) -> tuple[str, ...]:
        """The patient sides the finding lies on."""
        if self.side == "bilateral":
            return SIDES
        return (self.side,) if self.side in SIDES else ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.side:
            out["side"] = self.side
        if self.zone:
            out["zone"] = self.zone
        if self.kind != "support_devices":
            out["extent"] = round(float(self.extent), 4)
        if self.size:
            out["size"] = self.size
        if self.kind == "cardiomegaly":
            out["cardiothoracic_ratio"] = round(float(self.extent), 3)
        if self.devices:
            out["devices"] = list(self.devices)
        return out


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """How a frontal exam was taken: view "PA" | "AP"; rotation "none" |
    "right" | "left" (midline structures displaced toward that patient side);
    low_inspiration (diaphragm high, low lung volumes)."""

    view: str = "PA"
    rotation: str = "none"
    low_inspiration: bool = False

    @property
    def rotated(self) -> bool:
        return self.rotation != "none"

    def to_json(self) -> dict[str, Any]:
        return {"view": self.view, "rotation": self.rotation, "low_inspiration": self.low_inspiration}


@dataclasses.dataclass(frozen=True)
class ExamTruth:
    """Everything drawn into one frontal exam."""

    acquisition: Acquisition
    findings: tuple[Finding, ...]

    def finding(self, kind: str) -> Finding | None:
        for f in self.findings:
            if f.kind == kind:
                return f
        return None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(f.kind for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "acquisition": self.acquisition.to_json(),
            "findings": [f.to_json() for f in self.findings],
        }


@dataclasses.dataclass(frozen=True)
class LabelledRegion:
    """Where one finding (one side of it, or one device) is drawn on the
    current frontal image: kind, patient side ("" when none) and its box
    (0-100 scale, labelled as in detection answers)."""

    kind: str
    side: str
    box: Box

    def to_json(self) -> dict[str, Any]:
        b = self.box
        return {"kind": self.kind, "side": self.side, "label": b.label, "box": [b.x1, b.y1, b.x2, b.y2]}


@dataclasses.dataclass(frozen=True)
class StudyTruth:
    """Ground truth of one phantom study.

    current / prior / later: the exams (prior and later are None when absent).
    has_lateral: whether the current study has a lateral view after its frontal.
    regions: boxes of the findings drawn on the current frontal image.
    changes_from_prior: kind -> change (CHANGES) from the prior to the current
        exam; changes_to_later: from the current to the later exam. Kinds
        absent from both exams of a pair are not listed.
    """

    current: ExamTruth
    has_lateral: bool = False
    regions: tuple[LabelledRegion, ...] = ()
    prior: ExamTruth | None = None
    later: ExamTruth | None = None
    changes_from_prior: tuple[tuple[str, str], ...] = ()
    changes_to_later: tuple[tuple[str, str], ...] = ()

    def regions_of(self, kind: str) -> tuple[LabelledRegion, ...]:
        return tuple(r for r in self.regions if r.kind == kind)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "current": self.current.to_json(),
            "has_lateral": self.has_lateral,
            "regions": [r.to_json() for r in self.regions],
        }
        if self.prior is not None:
            out["prior"] = self.prior.to_json()
            out["changes_from_prior"] = dict(self.changes_from_prior)
        if self.later is not None:
            out["later"] = self.later.to_json()
            out["changes_to_later"] = dict(self.changes_to_later)
        return out


def _cells(f: Finding) -> set[tuple[str, str]]:
    """(side, zone) lung cells a finding occupies."""
    if f.kind == "pleural_effusion":
        zones = ("lower", "middle") if f.size == "large" else ("lower",)
        return {(s, z) for s in f.sides for z in zones}
    if f.kind in ("consolidation", "nodule"):
        return {(f.side, f.zone)}
    if f.kind == "pneumothorax":
        return {(f.side, z) for z in ZONES}
    if f.kind == "cardiomegaly":
        return {("left", "lower")}
    return set()


def conflicts(a: Finding, b: Finding) -> bool:
    """Whether two findings cannot both be drawn visibly in one exam."""
    if a.kind == b.kind:
        return True
    if {a.kind, b.kind} == {"cardiomegaly", "pleural_effusion"}:
        return False  # the effusion lies lateral to and below the heart border
    return bool(_cells(a) & _cells(b))


def _compatible(f: Finding, others: list[Finding]) -> bool:
    return not any(conflicts(f, o) for o in others)


def _sample_extent(kind: str, rng: np.random.Generator) -> float:
    bins = _EXTENTS[kind].bins
    _, low, high = bins[int(rng.integers(len(bins)))]
    return float(rng.uniform(low, high))


def _placements(kind: str, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Candidate (side, zone) placements of a new finding, in random order."""
    if kind == "pleural_effusion":
        options = [("right", ""), ("left", ""), ("bilateral", "")]
        weights = np.array([0.4, 0.35, 0.25])
        order = rng.choice(len(options), size=len(options), replace=False, p=weights)
        return [options[i] for i in order]
    if kind == "pneumothorax":
        return [(s, "") for s in rng.permutation(SIDES)]
    if kind in ("consolidation", "nodule"):
        cells = [(s, z) for s in SIDES for z in ZONES]
        return [cells[i] for i in rng.permutation(len(cells))]
    return [("", "")]


def _new_finding(kind: str, rng: np.random.Generator, others: list[Finding]) -> Finding | None:
    """A freshly sampled finding of `kind` compatible with `others`, or None."""
    if kind == "support_devices":
        devices = tuple(d for d, p in zip(DEVICES, (0.6, 0.7)) if rng.random() < p) or DEVICES[1:]
        side = str(rng.choice(SIDES, p=[0.7, 0.3])) if DEVICES[1] in devices else ""
        return Finding(kind, side=side, devices=devices)
    place = (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))
    extent = _sample_extent(kind, rng)
    for side, zone in _placements(kind, rng):
        candidate = Finding(kind, side=str(side), zone=str(zone), extent=extent, place=place)
        if _compatible(candidate, others):
            return candidate
    return None


def sample_findings(rng: np.random.Generator, prevalences: Prevalences) -> tuple[Finding, ...]:
    """Findings of one exam: each kind present with its prevalence, placed
    compatibly with the kinds sampled before it (kinds that cannot be placed
    are left out)."""
    findings: list[Finding] = []
    for kind in KINDS:
        if rng.random() < prevalences.of(kind):
            finding = _new_finding(kind, rng, findings)
            if finding is not None:
                findings.append(finding)
    return tuple(findings)


def sample_acquisition(
    rng: np.random.Generator, config: PhantomConfig, findings: tuple[Finding, ...] = ()
) -> Acquisition:
    """View and quality of one frontal exam. Intubated patients are imaged AP
    (portable) nine times out of ten."""
    intubated = any(DEVICES[0] in f.devices for f in findings)
    prob_ap = 0.9 if intubated else config.prob_ap
    view = "AP" if rng.random() < prob_ap else "PA"
    rotation = str(rng.choice(("right", "left"))) if rng.random() < config.prob_rotation else "none"
    low_inspiration = bool(rng.random() < config.prob_low_inspiration)
    return Acquisition(view=view, rotation=rotation, low_inspiration=low_inspiration)


def _clear_of_threshold(kind: str, value: float, direction: int) -> float:
    """Move an extent out of the ambiguous band around its size threshold, in
    the direction of the change (+1 grew, -1 shrank)."""
    spec = _EXTENTS[kind]
    threshold = spec.threshold
    if threshold is None or abs(value - threshold) >= _THRESHOLD_MARGIN:
        return value
    return threshold + direction * _THRESHOLD_MARGIN


def _resized(f: Finding, direction: int, rng: np.random.Generator) -> Finding | None:
    """`f` made larger (+1) or smaller (-1) by one clear step, or None when that
    leaves the kind's bounds."""
    spec = _EXTENTS[f.kind]
    step = float(rng.uniform(*spec.step))
    if spec.additive:
        value = f.extent + direction * step
    else:
        value = f.extent * step if direction > 0 else f.extent / step
    value = _clear_of_threshold(f.kind, value, direction)
    low, high = spec.bounds
    if not low <= value <= high:
        return None
    return dataclasses.replace(f, extent=value)


# Label of a change seen from the earlier to the later exam, by the event in the
# derived (target) exam, for deriving forward (a later exam) or backward (a prior).
_LABELS = {
    True: {"same": "unchanged", "gone": "resolved", "grown": "larger", "shrunk": "smaller", "appeared": "new"},
    False: {"same": "unchanged", "gone": "new", "grown": "smaller", "shrunk": "larger", "appeared": "resolved"},
}


def _changed(f: Finding, rng: np.random.Generator) -> list[tuple[str, Finding | None]]:
    """Possible changed versions of `f` in the derived exam (event, finding or
    None when it is gone), in random order."""
    options: list[tuple[str, Finding | None]] = [("gone", None)]
    if f.kind != "support_devices":
        for event, direction in (("grown", 1), ("shrunk", -1)):
            resized = _resized(f, direction, rng)
            if resized is not None:
                options.append((event, resized))
    return [options[i] for i in rng.permutation(len(options))]


def derive_findings(
    base: tuple[Finding, ...], rng: np.random.Generator, config: PhantomConfig, *, forward: bool
) -> tuple[tuple[Finding, ...], dict[str, str]]:
    """Findings of another exam of the same patient, and the per-kind change.

    forward=True derives a later exam from `base`; forward=False a prior one.
    Each finding stays unchanged with probability 1 - prob_change, else it is
    gone, grown or shrunk (whichever stays within bounds and compatible with
    the findings derived before it; "gone" always is). Then each absent kind
    appears with probability prob_appear. The change labels (CHANGES) always
    read from the earlier to the later exam ("new": absent before, present
    after); kinds absent from both exams get no label.
    """
    labels = _LABELS[forward]
    derived: list[Finding] = []
    changes: dict[str, str] = {}
    for f in base:
        options = _changed(f, rng)
        if rng.random() >= config.prob_change:
            options.insert(0, ("same", f))
        for event, changed in options:
            if changed is None or _compatible(changed, derived):
                changes[f.kind] = labels[event]
                if changed is not None:
                    derived.append(changed)
                break
    present = {f.kind for f in base}
    for kind in KINDS:
        if kind in present or rng.random() >= config.prob_appear:
            continue
        fresh = _new_finding(kind, rng, derived)
        if fresh is not None:
            derived.append(fresh)
            changes[kind] = labels["appeared"]
    derived.sort(key=lambda f: KINDS.index(f.kind))
    return tuple(derived), {k: changes[k] for k in KINDS if k in changes}
