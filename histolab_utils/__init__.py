"""histolab_utils: the tested helper package behind the histolab notebooks.

Modules are imported on demand so that ``import histolab_utils`` stays cheap:
``data`` (real H&E from pinned PyPI wheels), ``config`` (profiles, device, seeding),
``report`` (metrics JSON), ``runner`` (executes the notebooks), ``stains`` and ``plotting``.
"""

__version__ = "0.1.0"
