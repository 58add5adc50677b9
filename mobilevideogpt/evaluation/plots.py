"""The report's figures as PNG bytes: exercise confusion matrix and per-class metric means."""

from __future__ import annotations

import io


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(classes: list[str], predicted: list[str], counts: list[list[int]], title: str) -> bytes:
    """Rows: reference exercise; columns: predicted exercise (`predicted` may add "(none)" / "(other)")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(predicted), 1.0 + 0.55 * len(classes)))
    ax.imshow(counts, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(predicted)), predicted, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title, fontsize=9)
    peak = max((max(row) for row in counts), default=0)
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                        color="white" if value > peak / 2 else "black")
    return _png(fig)


def per_class_png(classes: list[str], series: dict[str, list[float | None]], title: str) -> bytes:
    """Grouped bars: one group per class, one bar per metric (missing values leave a gap)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2.0 + 1.1 * len(classes), 3.2))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + k * width for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width=width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))], classes, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)
