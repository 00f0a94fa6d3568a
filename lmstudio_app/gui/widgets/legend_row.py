"""A plot legend in a row above the plot, where it can never cover a curve or a bar.

pyqtgraph's own legend floats over the view box; this one takes the plot's title row (a plot
here has no title) and grows that row to fit its entries, in as many columns as given.
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg

from .. import theme

_ROW_PADDING = 2  # pixels under the legend, above the plot


class RowLegend(pg.LegendItem):
    """A LegendItem laid out by its plot's grid (row 0) instead of anchored in the view."""

    def __init__(self, plot_item: pg.PlotItem, columns: int, **kwargs: Any) -> None:
        super().__init__(colCount=columns, **kwargs)
        self._plot_item = plot_item
        self._max_columns = columns
        layout = plot_item.layout
        layout.removeItem(plot_item.titleLabel)
        plot_item.titleLabel.setVisible(False)
        # Across the axes' columns too: in the view box's column alone, a row wider than the view
        # would widen that column and push the right axis out of the widget.
        layout.addItem(self, 0, 0, 1, 3)
        plot_item.legend = self  # curves created with a name list themselves here
        self._fit_row()
        plot_item.vb.sigResized.connect(self.fit_columns)  # fewer columns (more rows) when narrow
        plot_item.geometryChanged.connect(self.fit_columns)  # and more again when the plot widens
        if "labelTextColor" not in kwargs:  # the theme's text colour, now and after a switch
            self._follow_theme()
            theme.on_scheme_changed(self, self._follow_theme)

    def _follow_theme(self) -> None:
        self.setLabelTextColor(theme.plot_palette().foreground)

    def updateSize(self) -> None:
        """The legend's size follows its entries; the plot's row follows the legend."""
        super().updateSize()
        self._fit_row()

    def addItem(self, item: Any, name: str) -> None:
        super().addItem(item, name)
        self.fit_columns()

    def fit_columns(self, *_args: Any) -> None:
        """As many entries side by side as fit the plot's width (at most the columns asked for)."""
        room = self._plot_item.width() - 10
        # The text's own width: a LabelItem's bounding box is the layout cell it was stretched to,
        # which would make the row look full once it is laid out.
        widths = [sample.boundingRect().width() + label.item.boundingRect().width() + 16 for sample, label in self.items]
        columns = max(1, min(self._max_columns, len(widths) or 1))
        while columns > 1 and self._widest_row(widths, columns) > room:
            columns -= 1
        if columns != self.columnCount:
            self.setColumnCount(columns)

    @staticmethod
    def _widest_row(widths: list[float], columns: int) -> float:
        """The width of the widest row with ``columns`` entries a row (each column as wide as its widest)."""
        cols = [max(widths[i::columns], default=0.0) for i in range(columns)]
        return sum(cols)

    def _fit_row(self) -> None:
        height = self.layout.preferredHeight() if self.items else 0
        self._plot_item.layout.setRowFixedHeight(0, height + (_ROW_PADDING if height else 0))
        self.setVisible(bool(self.items))

    def anchor(self, *args: Any, **kwargs: Any) -> None:
        """Placed by the plot's layout: ignore the anchoring a floating legend does."""
        return None

    def texts(self) -> list[str]:
        return [label.text for _, label in self.items]


def legend_above(plot_item: pg.PlotItem, columns: int = 6, **kwargs: Any) -> RowLegend:
    return RowLegend(plot_item, columns, **kwargs)
