"""The widget cells the browser test drives, named by a line of the code they run (never by position: a markdown
cell added above one would shift it). ``tests/test_notebook_structure.py`` checks, without a browser, that each
line is run by exactly one code cell of its notebook, so an edit that breaks the browser test fails ``make test``."""

WIDGET_CELLS = {
    "04_latent_clusters": "explorer = ClusterExplorer(",
    "05_conditional_ldm": "shown = explore(show_cluster_samples",
    "06_nuclei_masks": "shown = explore(show_masks",
    "10_large_regions": "shown = explore(show_field",
}
