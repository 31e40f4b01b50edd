"""An ipywidgets explorer of latent clusters, with an expert panel that edits and saves labels.

* a UMAP scatter coloured by any (method, k) partition of the sweep, or by the expert labels;
* a gallery of the tiles of a chosen cluster, each with a tick box;
* the expert panel: rename a cluster, merge two, move the ticked tiles, or adopt the partition
  on screen as the new starting point. Every edit is saved at once, atomically, and the file is
  what the notebook loads the next time.

All partitions are computed beforehand (by :func:`clustering.cluster_sweep`), so moving a
selector only recolours points. The edits are plain methods (:meth:`rename`, :meth:`merge`,
:meth:`move`, :meth:`adopt`) that the buttons call, so they are tested without a display; when
the notebook runs headless, :meth:`show` draws one static figure and builds no widget.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .clustering import ExpertLabels
from ..widgets import is_headless

EXPERT = "expert labels"


class ClusterExplorer:
    """Explore ``partitions[(method, k)]`` of ``tiles`` on a 2-D ``embedding``; edit ``expert``."""

    def __init__(self, embedding: np.ndarray, tiles: np.ndarray, tile_ids: Sequence[str],
                 partitions: dict[tuple[str, int], np.ndarray], expert: ExpertLabels, expert_path: str | Path,
                 gallery_size: int = 16) -> None:
        if not (len(embedding) == len(tiles) == len(tile_ids)):
            raise ValueError(f"embedding ({len(embedding)}), tiles ({len(tiles)}) and tile ids ({len(tile_ids)}) "
                             "must have one row per tile")
        self.embedding, self.tiles, self.tile_ids = np.asarray(embedding), tiles, list(tile_ids)
        self.partitions, self.expert, self.expert_path = partitions, expert, Path(expert_path)
        self.gallery_size = gallery_size
        self.methods = sorted({m for m, _ in partitions})
        self.ks = sorted({k for _, k in partitions})
        self._panel = None

    # -- what the controls do --------------------------------------------------------------
    def labels(self, colouring: str = EXPERT, k: int | None = None) -> np.ndarray:
        """Cluster of every tile under the expert labels or the (method, k) partition."""
        if colouring == EXPERT:
            return np.array([self.expert.assignment[t] for t in self.tile_ids])
        if (colouring, k) not in self.partitions:
            raise KeyError(f"no partition for method {colouring!r} and k={k}; have {sorted(self.partitions)}")
        return np.asarray(self.partitions[colouring, k])

    def members(self, cluster: int, colouring: str = EXPERT, k: int | None = None) -> np.ndarray:
        """Indices of the tiles of ``cluster``: a seeded sample of at most ``gallery_size``."""
        index = np.flatnonzero(self.labels(colouring, k) == cluster)
        if len(index) > self.gallery_size:
            index = np.sort(np.random.default_rng(cluster).choice(index, self.gallery_size, replace=False))
        return index

    def rename(self, cluster: int, name: str) -> Path:
        self.expert.rename(cluster, name)
        return self.expert.save(self.expert_path)

    def merge(self, keep: int, absorb: int) -> Path:
        self.expert.merge(keep, absorb)
        return self.expert.save(self.expert_path)

    def move(self, tiles: Sequence[str], cluster: int) -> Path:
        self.expert.move(tiles, cluster)
        return self.expert.save(self.expert_path)

    def adopt(self, method: str, k: int) -> Path:
        """Start the expert labels afresh from the (method, k) partition."""
        self.expert = ExpertLabels.from_clusters(self.tile_ids, self.labels(method, k))
        return self.expert.save(self.expert_path)

    # -- drawing ---------------------------------------------------------------------------
    def draw(self, colouring: str = EXPERT, k: int | None = None, cluster: int | None = None, axes=None,
             gallery: bool = True):
        """UMAP scatter (the chosen cluster ringed) and, with ``cluster`` and ``gallery``, its tiles."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        labels = self.labels(colouring, k)
        gallery = gallery and cluster is not None
        if axes is None:
            _, axes = plt.subplots(1, 2 if gallery else 1, figsize=(11 if gallery else 6, 5), squeeze=False)
            axes = axes[0]
        names = self.expert.names if colouring == EXPERT else {}
        hue = [names.get(c, f"cluster {c}") for c in labels]
        palette = dict(zip(sorted(set(hue)), sns.color_palette("tab20", len(set(hue)))))
        sns.scatterplot(x=self.embedding[:, 0], y=self.embedding[:, 1], hue=hue, palette=palette, s=12,
                        linewidth=0, ax=axes[0], legend=len(palette) <= 20)
        title = "expert labels" if colouring == EXPERT else f"{colouring}, k = {k}"
        axes[0].set(title=f"UMAP of latent features: {title}", xticks=[], yticks=[])
        if axes[0].get_legend():
            axes[0].legend(fontsize=7, markerscale=1.5, loc="best")
        if cluster is not None:
            chosen = labels == cluster
            axes[0].scatter(*self.embedding[chosen].T, s=30, facecolors="none", edgecolors="black", linewidths=0.6)
        if gallery:
            from ..diffusion.sampling import sample_grid

            index = self.members(cluster, colouring, k)
            axes[1].imshow(sample_grid(self.tiles[index], ncols=int(np.ceil(np.sqrt(max(len(index), 1))))))
            axes[1].axis("off")
            axes[1].set_title(f"{names.get(cluster, f'cluster {cluster}')}: {chosen.sum()} tiles")
        return axes

    def show(self):
        """The interactive panel; headless, one static figure of the expert labels instead."""
        if is_headless():
            first = self.expert.clusters[0]
            return self.draw(EXPERT, cluster=first)
        from IPython.display import display

        display(self.build())
        return self._panel

    def build(self):
        """Build (once) and return the widget panel."""
        import ipywidgets as w

        if self._panel is not None:
            return self._panel
        colouring = w.Dropdown(options=[EXPERT, *self.methods], value=EXPERT, description="colour by")
        k = w.SelectionSlider(options=self.ks, value=self.ks[0], description="k")
        cluster = w.Dropdown(description="cluster")
        plot, status = w.Output(), w.HTML()
        gallery = w.GridBox(layout=w.Layout(grid_template_columns="repeat(8, 76px)"))
        name = w.Text(description="new name")
        into = w.Dropdown(description="into")
        buttons = {label: w.Button(description=label) for label in
                   ("rename", "merge chosen into", "move ticked to", "adopt partition")}
        ticks: list[tuple[w.Checkbox, str]] = []

        def cluster_options():
            labels = self.labels(colouring.value, k.value)
            names = self.expert.names if colouring.value == EXPERT else {}
            return [(f"{names.get(c, f'cluster {c}')} ({(labels == c).sum()})", int(c)) for c in np.unique(labels)]

        def redraw(*_):
            import matplotlib.pyplot as plt

            k.disabled = colouring.value == EXPERT
            for button in ("rename", "merge chosen into", "move ticked to"):
                buttons[button].disabled = colouring.value != EXPERT
            buttons["adopt partition"].disabled = colouring.value == EXPERT
            with plot:
                plot.clear_output(wait=True)
                self.draw(colouring.value, k.value, cluster.value, axes=[plt.subplots(figsize=(6, 5))[1]], gallery=False)
                plt.show()
            ticks.clear()
            cells = []
            for i in self.members(cluster.value, colouring.value, k.value) if cluster.value is not None else []:
                box = w.Checkbox(value=False, indent=False, layout=w.Layout(width="70px"))
                ticks.append((box, self.tile_ids[i]))
                cells.append(w.VBox([w.Image(value=_png(self.tiles[i]), width=72, height=72), box]))
            gallery.children = cells

        def refresh_options(*_):
            options = cluster_options()
            value = cluster.value if cluster.value in [v for _, v in options] else options[0][1]
            cluster.unobserve(redraw, "value")
            cluster.options, cluster.value = options, value
            into.options = [o for o in options if o[1] != value] if colouring.value == EXPERT else []
            cluster.observe(redraw, "value")
            redraw()

        def act(edit):
            def handler(_):
                try:
                    path = edit()
                    status.value = f"saved to <code>{path}</code>"
                except ValueError as error:
                    status.value = f"<b>not done:</b> {error}"
                refresh_options()
            return handler

        buttons["rename"].on_click(act(lambda: self.rename(cluster.value, name.value)))
        buttons["merge chosen into"].on_click(act(lambda: self.merge(into.value, cluster.value)))
        buttons["move ticked to"].on_click(act(lambda: self.move([t for box, t in ticks if box.value], into.value)))
        buttons["adopt partition"].on_click(act(lambda: self.adopt(colouring.value, k.value)))
        colouring.observe(refresh_options, "value")
        k.observe(refresh_options, "value")
        cluster.observe(redraw, "value")
        cluster.observe(lambda _: setattr(into, "options", [o for o in cluster_options() if o[1] != cluster.value]
                                          if colouring.value == EXPERT else []), "value")
        refresh_options()
        expert_row = w.HBox([name, buttons["rename"]]), w.HBox([into, buttons["merge chosen into"],
                                                                  buttons["move ticked to"]])
        self._panel = w.VBox([w.HBox([colouring, k, cluster, buttons["adopt partition"]]), plot, gallery,
                              w.HTML("<b>expert panel</b> (edits the expert labels and saves them)"), *expert_row,
                              status])
        self.controls = {"colouring": colouring, "k": k, "cluster": cluster, "name": name, "into": into,
                         "ticks": ticks, **buttons}
        return self._panel


def _png(tile: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="PNG")
    return buffer.getvalue()
