"""A small loss-per-round curve of both networks, drawn with QPainter."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRect, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


class LossPlot(QWidget):
    """Training loss per round: network A (blue) and network B (orange)."""

    COLORS = (QColor(80, 160, 255), QColor(255, 150, 40))

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[tuple[float, float]] = []
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss per round: network A (blue), network B (orange)")

    def add(self, loss_a: float, loss_b: float) -> None:
        """Append one round and redraw."""
        self.losses.append((float(loss_a), float(loss_b)))
        self.update()

    def set_history(self, losses: list[tuple[float, float]]) -> None:
        """Replace all points (e.g. from a loaded model's history)."""
        self.losses = [(float(a), float(b)) for a, b in losses]
        self.update()

    def value_range(self) -> tuple[float, float] | None:
        """The loss axis, bottom and top: the losses with a margin, so that no point sits on
        the frame, never below 0 (a loss is not negative); ``None`` without finite losses."""
        finite = [v for pair in self.losses for v in pair if np.isfinite(v)]
        if not finite:
            return None
        lo, hi = min(finite), max(finite)
        pad = max(hi - lo, abs(hi) * 0.1, 1e-6) * 0.1
        return (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad

    def value_labels(self) -> tuple[str, str]:
        """The texts beside the axis' top and bottom (empty without finite losses)."""
        axis = self.value_range()
        return ("", "") if axis is None else (f"{axis[1]:.3g}", f"{axis[0]:.3g}")

    def legend(self) -> tuple[str, str]:
        """The names of A's and B's curves, each with its latest finite loss: the values the
        axis does not give."""
        labels = []
        for k, name in enumerate("AB"):
            finite = [pair[k] for pair in self.losses if np.isfinite(pair[k])]
            labels.append(f"— {name} {finite[-1]:.3g}" if finite else f"— {name}")
        return labels[0], labels[1]

    def frame(self) -> QRect:
        """Where the curves go: room left for the value labels (as wide as they are), above
        for the legend and below for the round labels."""
        metrics = self.fontMetrics()
        line = metrics.height()
        widest = max(metrics.horizontalAdvance(t) for t in ("0.000", *self.value_labels()))
        return self.rect().adjusted(widest + 8, line + 4, -8, -line - 6)

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        metrics = painter.fontMetrics()
        line = metrics.height()
        rect = self.frame()
        fg = self.palette().color(self.foregroundRole())
        painter.setPen(QPen(fg, 1))
        painter.drawRect(rect)
        axis = self.value_range()
        if axis is None:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "loss per round")
            return
        lo, hi = axis
        n = len(self.losses)
        left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for y, label in zip((rect.top(), rect.bottom()), self.value_labels(), strict=True):
            box = QRectF(0, y - line / 2, rect.left() - 4, line)
            painter.drawText(box, right, label)
        below = QRectF(rect.left(), rect.bottom() + 3, rect.width(), line)
        painter.drawText(below, left, "round 1")
        if n > 1:  # a single round is round 1 alone
            painter.drawText(below, right, f"{n}")
        painter.drawText(QRectF(rect.left(), 0, rect.width(), line), left, "loss")
        x = rect.right()
        for label, color in zip(self.legend()[::-1], self.COLORS[::-1], strict=True):
            x -= metrics.horizontalAdvance(label) + 8
            painter.setPen(QPen(color, 2))
            painter.drawText(QRectF(x, 0, rect.right() - x, line), left, label)
        painter.setPen(QPen(fg, 1))
        if n > 2 and rect.width() >= 4 * (n - 1):  # a tick on the frame where each round ends
            for i in range(1, n - 1):
                px = rect.left() + rect.width() * i / (n - 1)
                painter.drawLine(QPointF(px, rect.bottom()), QPointF(px, rect.bottom() - 4))

        def point(i: int, v: float) -> QPointF:
            # a single round sits in the middle rather than on the frame
            t = 0.5 if n == 1 else i / (n - 1)
            px = rect.left() + rect.width() * t
            py = rect.bottom() - rect.height() * (v - lo) / (hi - lo)
            return QPointF(px, py)

        for k, color in enumerate(self.COLORS):
            painter.setPen(QPen(color, 2))
            path = QPainterPath()
            started = False
            for i, pair in enumerate(self.losses):
                v = pair[k]
                if not np.isfinite(v):
                    started = False
                    continue
                p = point(i, v)
                if started:
                    path.lineTo(p)
                else:
                    path.moveTo(p)
                    started = True
                painter.drawEllipse(p, 2.5, 2.5)
            painter.drawPath(path)
