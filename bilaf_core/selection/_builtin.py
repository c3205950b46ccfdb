"""Imports every built-in method module so that each registers itself."""

from . import (  # noqa: F401
    activeft,
    bilaf,
    coreset,
    fds,
    fisher,
    kmeans,
    probcover,
    random_method,
    typiclust,
)

#: The order of every list, legend and table: the flagship first, then its core stage, then
#: the baselines from the simplest up.
DISPLAY_ORDER = ("bilaf", "activeft", "random", "kmeans", "kmeans-multibatch", "coreset", "fds", "typiclust", "probcover", "fisher")
