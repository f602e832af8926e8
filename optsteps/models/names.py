"""Model names in one place: the embedded and built-in names, and the slug that every output path, DVC stage and
registry name of a model uses.

A slug is lower-case ASCII letters, digits, ``-`` and ``_``, starting with a letter or digit. No ``.``: DVC reads
``models.<slug>`` in ``params.yaml`` as a nested key, so a dot would split the name. ``slugify`` turns any text into
one; ``slug_for_pipeline`` is the slug of a pipeline folder or hub id given on the command line.
"""

from __future__ import annotations

import re
from pathlib import Path

EMBEDDED = ("digits", "digits-flow")  # trained by the project (`optsteps train`), weights in artifacts/models/<name>
BUILTIN = EMBEDDED + ("gmm",)  # the noise schedule needs no weights
CLASSIFIER = "classifier"  # the digits classifier of the evaluation (artifacts/models/classifier)
TRAINABLE = EMBEDDED + (CLASSIFIER,)
RESERVED = BUILTIN + (CLASSIFIER,)  # names a pipeline entry may not take

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def is_slug(name) -> bool:
    return isinstance(name, str) and bool(_SLUG.match(name))


def slugify(text: str) -> str:
    """Lower-case, every run of other characters than ``a-z0-9_-`` becomes one ``-``, stripped at both ends
    (``"SD v1.5"`` → ``"sd-v1-5"``); ``"model"`` if nothing is left."""
    s = re.sub(r"[^a-z0-9_-]+", "-", str(text).lower()).strip("-_")
    return s or "model"


def slug_for_pipeline(pipeline) -> str:
    """The slug of a pipeline given by its folder (its own name: ``/models/sd-v1-5`` → ``sd-v1-5``) or by a hub
    id (``org/name`` → ``org-name``)."""
    p = Path(str(pipeline)).expanduser()
    if p.is_dir():
        return slugify(p.resolve().name)
    return slugify(str(pipeline).replace("/", "-"))
