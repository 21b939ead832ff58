"""Making a finished generated folder a dataset people can pick up: its card (README.md), its
Croissant metadata (croissant.json) and, on request, WebDataset shards (shards/*.tar).

`write_metadata` is what jobs/mass_generate.py calls at the end of every job (before
summary.json, so a complete folder always has both); `export` is jobs/export.py: the shards,
and the card and Croissant file written again with them and with an evaluation report's
figures. Every input is checked before anything is written; the folder's lease is held while
writing; the marker of the folder lists every artefact written. No Ray.
"""

from __future__ import annotations

import logging
from pathlib import Path

from regene_ray.generated import FINISH_HINT, SUMMARY_FILE
from regene_ray.ownership import Lease, OwnershipError, add_artefacts, read_marker
from regene_ray.publish import card, croissant
from regene_ray.publish.facts import SHARDS_DIR, DatasetFacts, gather
from regene_ray.publish.shards import check_plan, plan_of, write_shards
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

ARTEFACTS = [card.CARD_FILE, croissant.CROISSANT_FILE, SHARDS_DIR]


def write_metadata(out: Storage, summary: dict | None = None,
                   report: str | Path | None = None) -> DatasetFacts:
    """Write OUT/README.md and OUT/croissant.json (each atomically) from the folder's records."""
    facts = gather(out, summary, report)
    out.write_bytes(card.CARD_FILE, card.render(facts).encode())
    out.write_json(croissant.CROISSANT_FILE, croissant.metadata(facts))
    return facts


def check_finished(out: Storage) -> None:
    """`out` must be a finished jobs/mass_generate.py output."""
    marker = read_marker(out)
    if marker is None or marker.get("kind") != "mass":
        raise OwnershipError(f"--generated {out.display()} is not a jobs/mass_generate.py "
                             f"output (no mass-generation marker); {FINISH_HINT}")
    if not out.is_file(SUMMARY_FILE):
        raise FileNotFoundError(f"--generated {out.display()} is unfinished (no {SUMMARY_FILE}); "
                                "complete it with jobs/mass_generate.py --resume first")


def export(out: Storage, *, report: str | Path | None = None, shard_size: int | None = None,
           overwrite: bool = False) -> DatasetFacts:
    """The card and Croissant file (with `report`'s figures), and with `shard_size` the
    WebDataset shards; checks everything before it writes anything."""
    check_finished(out)
    facts = gather(out, report=report)  # a report of another folder fails here
    plan = plan_of(facts.identity, facts.rows, shard_size) if shard_size else None
    if plan:
        check_plan(out, plan, overwrite=overwrite)  # another export's shards, foreign files
    with Lease(out, "export"):
        add_artefacts(out, "mass", ARTEFACTS)
        if plan:
            write_shards(out, facts.identity, facts.rows, shard_size, overwrite=overwrite)
        return write_metadata(out, report=report)
