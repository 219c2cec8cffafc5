"""A small loss-per-round curve of both networks, drawn with QPainter."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
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
        # room for the value labels left, the legend above and the round labels below
        rect = self.rect().adjusted(
            metrics.horizontalAdvance("0.000") + 8, line + 4, -8, -line - 6
        )
        fg = self.palette().color(self.foregroundRole())
        painter.setPen(QPen(fg, 1))
        painter.drawRect(rect)
        finite = [v for pair in self.losses for v in pair if np.isfinite(v)]
        if not finite:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "loss per round")
            return
        lo, hi = min(finite), max(finite)
        pad = max(hi - lo, abs(hi) * 0.1, 1e-6) * 0.1
        lo, hi = lo - pad, hi + pad  # no point sits on the frame
        n = len(self.losses)
        left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for y, value in ((rect.top(), hi), (rect.bottom(), lo)):
            box = QRectF(0, y - line / 2, rect.left() - 4, line)
            painter.drawText(box, right, f"{value:.3g}")
        below = QRectF(rect.left(), rect.bottom() + 3, rect.width(), line)
        painter.drawText(below, left, "round 1")
        painter.drawText(below, right, f"{n}")
        painter.drawText(QRectF(rect.left(), 0, rect.width(), line), left, "loss")
        x = rect.right()
        for label, color in zip(("B", "A"), self.COLORS[::-1], strict=True):
            x -= metrics.horizontalAdvance(f"— {label}") + 8
            painter.setPen(QPen(color, 2))
            painter.drawText(QRectF(x, 0, rect.right() - x, line), left, f"— {label}")

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
