"""The conversion report: what the converter replaced, folded, removed, kept and inserted."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConversionReport", "ReportEntry"]


@dataclass(frozen=True)
class ReportEntry:
    """One change: ``action`` (replaced, removed, folded, moved, inserted, kept, skipped),
    ``what`` (e.g. ``"Conv2d -> BcosConv2d"``) and the qualified ``name`` of the node/module."""

    action: str
    what: str
    name: str
    detail: str = ""


@dataclass
class ConversionReport:
    """What :func:`bcosify.convert` did (or, from :func:`bcosify.analyze`, would do).

    Attributes:
        model: class name of the source model.
        entries: one :class:`ReportEntry` per change.
        unsupported: ``(name, kind, hint)`` for every node no rule covers (only filled by
            ``analyze``; ``convert`` raises instead).
        num_classes: number of outputs of the converted model.
        config: the conversion options as a dict.
    """

    model: str = ""
    entries: list[ReportEntry] = field(default_factory=list)
    unsupported: list[tuple[str, str, str]] = field(default_factory=list)
    num_classes: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def add(self, action: str, what: str, name: str, detail: str = "") -> None:
        self.entries.append(ReportEntry(action, what, name, detail))

    def counts(self) -> Counter:
        """Number of entries per ``(action, what)``."""
        return Counter((e.action, e.what) for e in self.entries)

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "num_classes": self.num_classes,
            "config": self.config,
            "mean": self.mean,
            "std": self.std,
            "counts": [
                {"action": a, "what": w, "count": n} for (a, w), n in sorted(self.counts().items())
            ],
            "entries": [e.__dict__ for e in self.entries],
            "unsupported": [list(u) for u in self.unsupported],
        }

    def __str__(self) -> str:
        order = ["built", "replaced", "folded", "moved", "removed", "inserted", "kept", "skipped"]
        # every other action (specialized, kept whole, not checked, ...) after those, as added
        order += [e.action for e in self.entries if e.action not in order]
        order = list(dict.fromkeys(order))
        lines = [f"B-cos conversion of {self.model or 'model'}"]
        cfg = self.config
        if cfg:
            lines.append(
                f"  config: B={cfg.get('b')}, keep_bias={cfg.get('keep_bias')}, "
                f"activation={cfg.get('activation')}, maxpool={cfg.get('maxpool')}, "
                f"normalize_weights={cfg.get('normalize_weights')}"
            )
        if self.mean is not None:
            lines.append(f"  input: mean={_fmt(self.mean)} std={_fmt(self.std)} -> [x, 1-x]")
        if self.num_classes is not None:
            lines.append(f"  classes: {self.num_classes}")
        counts = self.counts()
        width = max((len(w) for (_, w) in counts), default=10)
        for action in order:
            for (a, what), n in sorted(counts.items()):
                if a != action:
                    continue
                names = [e.name for e in self.entries if e.action == a and e.what == what]
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                lines.append(f"  {a:<9} {what:<{width}} {n:>4}   ({shown})")
        if self.unsupported:
            lines.append(f"  UNSUPPORTED: {len(self.unsupported)} operation(s)")
            for name, kind, hint in self.unsupported:
                lines.append(f"    - {name} ({kind}): {hint}")
        return "\n".join(lines)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
