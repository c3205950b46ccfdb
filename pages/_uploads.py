"""Uploaded files on the Data & model page: staged under the user's own file names, and errors
that name those files — never the server's temporary paths — and never suggest loading pickles."""

from __future__ import annotations

import re
from pathlib import Path

#: what a features upload must be; anything else gets :func:`features_file_problem`'s message
FEATURE_SUFFIXES = (".npy",)


def features_file_problem(file_name: str) -> str | None:
    """Why an uploaded features file cannot be imported as it is (None when it can be tried)."""
    suffix = Path(file_name).suffix.lower()
    if suffix in FEATURE_SUFFIXES:
        return None
    if suffix in (".txt", ".csv"):
        return (f"“{file_name}” is a text file; the features must be a NumPy .npy array (N rows × D numbers). "
                f"Convert it once: numpy.save('{Path(file_name).stem}.npy', numpy.loadtxt('{file_name}'"
                + (", delimiter=','" if suffix == ".csv" else "") + ", dtype='float32')) — then upload the .npy.")
    return f"“{file_name}” is not a .npy file; the features must be a NumPy .npy array (N rows × D numbers), saved with numpy.save."


def stage_uploads(folder: Path, uploads: dict) -> tuple[dict[str, Path], dict[str, str]]:
    """Write each upload (role -> UploadedFile or None) to ``folder/<role>/<its own name>``;
    return the paths by role and, for :func:`user_message`, the user's name of every path."""
    paths, names = {}, {}
    for role, up in uploads.items():
        if up is None:
            continue
        own = Path(up.name).name or role
        path = folder / role / own
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(up.getvalue())
        paths[role] = path
        names[str(path)] = own
        names[str(path.resolve())] = own
    return paths, names


def user_message(message: str, names: dict[str, str]) -> str:
    """`message` with every staged path replaced by the user's file name (quoted), and any
    stray temporary path or pickle advice taken out."""
    for path in sorted(names, key=len, reverse=True):
        message = message.replace(path, f"“{names[path]}”")
    # a temporary folder that slipped through (e.g. in a nested error) names only the file
    message = re.sub(r"/(?:tmp|var/folders)/[^\s'\"“”),;]*/([^/\s'\"“”),;]+)", r"“\1”", message)
    message = re.sub(r"[^.;()]*allow_pickle[^.;()]*[.;]?", "", message)
    return re.sub(r"\s{2,}", " ", message).strip()
