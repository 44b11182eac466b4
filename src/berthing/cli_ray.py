"""`berthing ray ...`: berthing's models as Ray Serve applications on a Ray cluster (imports Ray only when run)."""

from __future__ import annotations

import typer

ray_app = typer.Typer(
    no_args_is_help=True, help="Serve models on a Ray cluster (pip install 'berthing\\[ray]'; docs/ray.md)."
)
