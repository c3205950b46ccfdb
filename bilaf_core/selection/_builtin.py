"""Imports every built-in method module so that each registers itself (order = display order)."""

from . import (  # noqa: F401
    bilaf,
    activeft,
    random_method,
    kmeans,
    coreset,
    fds,
    typiclust,
    probcover,
    fisher,
)
