"""Export a finished generated folder as a dataset: WebDataset shards, and the dataset card and
Croissant metadata written again with them and with an evaluation report's headline figures.

    # shards/00000.tar ... of 10,000 samples each (KEY.png, KEY.cls, KEY.json)
    python jobs/export.py --generated gen/mnist --webdataset
    # the card and croissant.json with the figures of an evaluation of this folder
    python jobs/export.py --generated gen/mnist --report reports/mnist

Every jobs/mass_generate.py output already carries README.md (a Hugging Face dataset card) and
croissant.json (MLCommons Croissant 1.0); this job adds what the generation job cannot know:
an evaluation made afterwards (jobs/evaluate.py --generated OUT), and shards for loaders that
stream tar files. The shards are an export rather than a second output format of the generation
job: they take the rows in id order, which mixes the classes (a generation chunk holds one
class); any shard size can be made again from the same Parquet without generating anything;
and folders generated before the export existed (in the same output format) can be exported
too. A shard's bytes depend only on the folder's rows and the shard size, so they are the same
whatever worker count generated the folder; an interrupted export is completed by running it
again. Output, inside --generated: shards/*.tar, shards/index.json
(written last), README.md, croissant.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regene_ray.cli import positive_int, run_main, setup_logging  # noqa: E402

DEFAULT_SHARD_SIZE = 10_000


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generated", required=True, help="a finished jobs/mass_generate.py --out "
                   "folder (local, s3://, gs://)")
    p.add_argument("--webdataset", action="store_true", help="write WebDataset shards into "
                   "GENERATED/shards/")
    p.add_argument("--shard-size", type=positive_int("--shard-size"),
                   help=f"samples per shard, with --webdataset (default: {DEFAULT_SHARD_SIZE:,})")
    p.add_argument("--run", help="the run folder the set was generated from, when job.json's "
                   "record of it does not reach it (moved, or s3:// / gs:// with credentials "
                   "or options job.json leaves out)")
    p.add_argument("--report", type=Path, help="a jobs/evaluate.py --out folder that evaluated "
                   "--generated: its headline figures go into the card")
    p.add_argument("--overwrite", action="store_true", help="replace shards of another shard "
                   "size (only the shards an earlier export wrote)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(args: argparse.Namespace) -> dict:
    setup_logging(args.verbose)
    if not args.webdataset and (args.shard_size or args.overwrite):
        raise ValueError("--shard-size and --overwrite are about WebDataset shards: add "
                         "--webdataset")
    from regene_ray.publish.export import export
    from regene_ray.storage import Storage

    facts = export(Storage(args.generated), report=args.report, run=args.run,
                   shard_size=(args.shard_size or DEFAULT_SHARD_SIZE) if args.webdataset
                   else None, overwrite=args.overwrite)
    result = {"generated": facts.out.display(), "rows": facts.rows, "licence":
              facts.source.licence, "card": "README.md", "croissant": "croissant.json",
              "shards": len(facts.shards["shards"]) if facts.shards else 0,
              "report": str(args.report) if args.report else None}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()),
             again="run the same command again to complete the export")
