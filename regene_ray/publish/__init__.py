"""A generated folder as a dataset people can pick up (no Ray):

    sources.py   the source datasets' licences and ids
    facts.py     what the card and Croissant file say, from the job's own records
    card.py      README.md: a Hugging Face dataset card
    croissant.py croissant.json: MLCommons Croissant 1.0 metadata with the lineage
    shards.py    shards/*.tar: WebDataset shards, deterministic and resumable
    export.py    write_metadata (every mass job) and export (jobs/export.py)
"""
