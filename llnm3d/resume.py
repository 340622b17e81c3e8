"""Resuming a stage from its output folder, by content rather than by file name.

Every resumable stage (``heatmap``, ``register``) records its parameters in a JSON file of the
output folder and refuses a folder made with other ones (:func:`claim_folder`). Each finished
case stores the :func:`llnm3d.io.digest` of everything it was computed from (its manifest
fields, the bytes of its input files, the software version) as ``input_digest`` in its
``.npz``; a re-run reuses exactly the cases whose digest still matches and redoes the others
(:func:`finished_cases`), saying how many. A finished file that cannot be read is redone too,
and temporaries left by a killed run are removed.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import InputError, read_json, remove_temporaries, write_json


@dataclass
class Resumed:
    """What a stage found in its output folder.

    Attributes
    ----------
    reused : int
        Finished cases whose inputs are unchanged (not computed again).
    changed : list of str
        Cases computed before from other inputs (redone).
    unreadable : list of str
        Cases whose finished file could not be read (redone).
    temporaries_removed : int
        Leftover temporaries of killed runs that were deleted.
    """

    reused: int = 0
    changed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    temporaries_removed: int = 0

    def notes(self, what: str) -> list[str]:
        """One line per kind of redone work, for people (empty when nothing was redone)."""
        notes = []
        if self.changed:
            notes.append(f"{len(self.changed)} {what}(s) redone because their inputs changed "
                         f"since the last run (e.g. {self.changed[0]!r})")
        if self.unreadable:
            notes.append(f"{len(self.unreadable)} {what}(s) redone because their finished file "
                         f"could not be read (e.g. {self.unreadable[0]!r})")
        return notes


def claim_folder(out_dir: Path, record_name: str, format_name: str, parameters: dict,
                 command: str) -> int:
    """Refuse ``out_dir`` if it was made with other ``parameters``; record ours (as not yet
    complete) and remove temporaries of earlier, killed runs. Returns how many were removed.

    Raises
    ------
    InputError
        If the folder's record names other parameters.
    """
    started = time.time()
    record = out_dir / record_name
    if record.exists():
        previous = read_json(record)
        if previous.get("parameters") != parameters:
            changed = sorted(key for key in {*parameters, *previous.get("parameters", {})}
                             if parameters.get(key) != previous.get("parameters", {}).get(key))
            raise InputError(f"{out_dir} holds `llnm3d {command}` output made with other "
                             f"parameters ({', '.join(changed)}); use a new folder or delete "
                             "it")
    write_json(record, {"format": format_name, "parameters": parameters, "complete": False})
    return remove_temporaries(out_dir, started)


def stored_digest(path: Path) -> str | None:
    """The ``input_digest`` stored in a finished ``.npz`` (None if it has none).

    Raises
    ------
    OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile
        If the file cannot be read.
    """
    with np.load(path) as data:
        return str(data["input_digest"]) if "input_digest" in data.files else None


def finished_cases(paths: dict[str, Path], digests: dict[str, str]) -> tuple[set[str], Resumed]:
    """The cases whose finished file exists, reads, and was computed from the same inputs.

    Parameters
    ----------
    paths : dict of case -> Path
        Where each case's finished ``.npz`` would be.
    digests : dict of case -> str
        The digest of each case's current inputs.

    Returns
    -------
    done : set of str
        Cases to reuse.
    resumed : Resumed
        Counts of reused, changed and unreadable cases.
    """
    done: set[str] = set()
    resumed = Resumed()
    for case, path in paths.items():
        if not path.is_file():
            continue
        try:
            stored = stored_digest(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            resumed.unreadable.append(case)
            continue
        if stored == digests[case]:
            done.add(case)
        else:
            resumed.changed.append(case)
    resumed.reused = len(done)
    return done, resumed
