"""Selection methods: one module per method, all behind :func:`run_selection`."""

from .base import (
    MethodSpec,
    Param,
    RunContext,
    Selection,
    available_methods,
    check_indices,
    get_method,
    load_indices_file,
    register_method,
    resolve_budget,
    run_selection,
    validate_features,
)

__all__ = [
    "MethodSpec",
    "Param",
    "RunContext",
    "Selection",
    "available_methods",
    "check_indices",
    "get_method",
    "load_indices_file",
    "register_method",
    "resolve_budget",
    "run_selection",
    "validate_features",
]
