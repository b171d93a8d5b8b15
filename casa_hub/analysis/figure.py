"""The figure ``casa_hub.analysis.plot`` returns: a ``matplotlib.figure.Figure`` that Jupyter shows as a
picture whichever matplotlib backend is active (a figure made without pyplot otherwise shows only as
``<Figure size ...>``: no backend registered a picture for it)."""

from __future__ import annotations

import io

from matplotlib.figure import Figure


class ResultFigure(Figure):
    """A Figure with a PNG representation for IPython's display."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png")
        return buffer.getvalue()
