"""Colour tables of the atlas region labels for 3D Slicer and ITK-SNAP.

``Atlas.save`` writes them beside ``labels.nii.gz``: ``labels.ctbl`` (3D Slicer colour table:
load it with the volume as a label map) and ``labels.itksnap.txt`` (ITK-SNAP label
description file: Segmentation > Import Label Descriptions). Both list every region label with
its name and colour, and 0 as the background.
"""

from __future__ import annotations

from pathlib import Path

from .io import write_text


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` -> (r, g, b), each 0-255."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return r, g, b


def slicer_color_table(names: dict[int, str], colours: dict[int, str]) -> str:
    """3D Slicer colour table text: ``label name R G B A`` per line, names without spaces,
    components 0-255; label 0 is the transparent background."""
    lines = ["# 3D Slicer color table of the llnm3d atlas region labels",
             f"# {len(names) + 1} values", "0 background 0 0 0 0"]
    for label in sorted(names):
        r, g, b = hex_rgb(colours[label])
        lines.append(f"{label} {names[label].replace(' ', '_')} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def itksnap_label_description(names: dict[int, str], colours: dict[int, str]) -> str:
    """ITK-SNAP label description text: ``IDX R G B A VIS MSH "LABEL"`` per line, alpha 0-1;
    label 0 is ITK-SNAP's "Clear Label"."""
    lines = ["################################################",
             "# ITK-SnAP Label Description File",
             "# llnm3d atlas region labels",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             "################################################",
             '    0     0    0    0     0  0  0    "Clear Label"']
    for label in sorted(names):
        r, g, b = hex_rgb(colours[label])
        lines.append(f'{label:5d} {r:5d} {g:4d} {b:4d}     1  1  1    "{names[label]}"')
    return "\n".join(lines) + "\n"


def write_label_tables(folder: str | Path, names: dict[int, str],
                       colours: dict[int, str]) -> list[Path]:
    """Write ``labels.ctbl`` and ``labels.itksnap.txt`` into ``folder``; return their paths."""
    folder = Path(folder)
    paths = [folder / "labels.ctbl", folder / "labels.itksnap.txt"]
    write_text(paths[0], slicer_color_table(names, colours))
    write_text(paths[1], itksnap_label_description(names, colours))
    return paths
