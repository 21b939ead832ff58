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

from regene_ray.generated import FINISH_HINT, JOB_FILE, SUMMARY_FILE
from regene_ray.ownership import Lease, OwnershipError, add_artefacts, read_marker
from regene_ray.publish import card, croissant
from regene_ray.publish.facts import SHARDS_DIR, DatasetFacts, gather
from regene_ray.publish.shards import prepare, write_shards
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

METADATA = [card.CARD_FILE, croissant.CROISSANT_FILE]  # what every mass job writes


def write_metadata(out: Storage, summary: dict | None = None,
                   report: str | Path | None = None, run: str | None = None,
                   facts: DatasetFacts | None = None) -> DatasetFacts:
    """Write OUT/README.md and OUT/croissant.json (each atomically) from the folder's records
    (`facts`, when the caller gathered them already)."""
    facts = facts or gather(out, summary, report, run)
    text, meta = card.render(facts), croissant.metadata(facts)
    out.write_bytes(card.CARD_FILE, text.encode())
    out.write_json(croissant.CROISSANT_FILE, meta)
    return facts


def check_finished(out: Storage) -> None:
    """`out` must be a finished jobs/mass_generate.py output of this output format."""
    marker = read_marker(out)
    if marker is None or marker.get("kind") != "mass":
        raise OwnershipError(f"--generated {out.display()} is not a jobs/mass_generate.py "
                             f"output (no mass-generation marker); {FINISH_HINT}")
    if not out.is_file(SUMMARY_FILE):
        raise FileNotFoundError(f"--generated {out.display()} is unfinished (no {SUMMARY_FILE}); "
                                "complete it with jobs/mass_generate.py --resume first")
    from regene_ray.mass.identity import FORMAT

    made = out.read_json(JOB_FILE).get("format")
    if made != FORMAT:
        raise ValueError(f"--generated {out.display()} was written in an earlier output format "
                         f"({made}, not {FORMAT}): its columns differ; generate it again with "
                         "jobs/mass_generate.py to export it")


def export(out: Storage, *, report: str | Path | None = None, shard_size: int | None = None,
           overwrite: bool = False, run: str | None = None) -> DatasetFacts:
    """The card and Croissant file (with `report`'s figures), and with `shard_size` the
    WebDataset shards. Everything is read and checked (the folder, the run's metrics, the
    report, the rows, what shards/ holds, the card rendered) before anything is written."""
    check_finished(out)
    facts = gather(out, report=report, run=run, require_run=True)
    prepared = None
    if shard_size:
        prepared = prepare(out, facts.identity, facts.rows, shard_size, overwrite=overwrite)
        facts.shards = prepared.plan | {"shards": [None] * prepared.plan["shards"]}
    card.render(facts), croissant.metadata(facts)  # what could fail, before writing
    with Lease(out, "export"):
        add_artefacts(out, "mass", METADATA + ([SHARDS_DIR] if prepared else []))
        if prepared:
            facts.shards = write_shards(out, facts.identity, prepared)
        return write_metadata(out, facts=facts)
