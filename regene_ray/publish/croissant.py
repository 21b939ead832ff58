"""OUT/croissant.json: MLCommons Croissant 1.0 metadata (JSON-LD) for a generated folder.

One FileSet (data/*.parquet), one record set `default` with a field per column (the image
extracted from the `image` struct's PNG bytes, the label referencing a `classes` record set of
the run's class names), and the lineage in W3C PROV terms, as Croissant's provenance guidance
uses them: `prov:wasDerivedFrom` the source dataset and `prov:wasGeneratedBy` the generation
activity (method, run checkpoints, generation settings). Written as plain JSON so that a user
who never validates it needs no extra package; `mlcroissant` validates and reads it in the
tests.
"""

from __future__ import annotations

from regene_ray.publish.facts import DatasetFacts

CROISSANT_FILE = "croissant.json"
FILESET = "parquet-files"
RECORDS = "default"
CLASSES = "classes"

CITATION = ("@article{gopalakrishnan2021classify, title={Classify and generate: Using "
            "classification latent space representations for image generations}, author="
            "{Gopalakrishnan, Saisubramaniam and Singh, Pranshu Ranjan and Yazici, Yasin and Foo, "
            "Chuan-Sheng and Chandrasekhar, Vijay and Ambikapathi, ArulMurugan}, journal="
            "{Neurocomputing}, year={2021}}")

LICENCE_URLS = {"mit": "https://spdx.org/licenses/MIT.html",
                "cc-by-4.0": "https://spdx.org/licenses/CC-BY-4.0.html"}

CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs",
    "column": "cr:column", "conformsTo": "dct:conformsTo",
    "equivalentProperty": "cr:equivalentProperty", "samplingRate": "cr:samplingRate", "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/", "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"}, "dct": "http://purl.org/dc/terms/",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract",
    "field": "cr:field", "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet", "format": "cr:format", "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset", "jsonPath": "cr:jsonPath", "key": "cr:key",
    "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path",
    "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex",
    "repeated": "cr:repeated", "replace": "cr:replace", "sc": "https://schema.org/",
    "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField",
    "transform": "cr:transform", "prov": "http://www.w3.org/ns/prov#",
}

# column -> (Croissant data type, repeated, description)
COLUMNS = [
    ("id", "sc:Integer", False, "the generation's id (class = id mod classes); unique"),
    ("label", "sc:Integer", False, "the class the image was generated for"),
    ("image", "sc:ImageObject", False, "the decoded image (PNG)"),
    ("n_parents", "sc:Integer", False, "how many latent codes were mixed"),
    ("parent_ids", "sc:Integer", True, "the mixed codes' ids in the run's latent bank"),
    ("weights", "sc:Float", True, "the mixing weights, one per parent, summing to 1 (convex unless made with affine weights)"),
    ("latent_confidence", "sc:Float", False, "the classifier's confidence in the mixed code"),
    ("image_confidence", "sc:Float", False, "its confidence in the decoded image"),
]


def _field(name: str, dtype: str, repeated: bool, what: str) -> dict:
    source = {"fileSet": {"@id": FILESET}, "extract": {"column": name}}
    if name == "image":  # the Hugging Face Image struct {bytes, path}
        source["transform"] = {"jsonPath": "bytes"}
    field = {"@type": "cr:Field", "@id": f"{RECORDS}/{name}", "name": name,
             "description": what, "dataType": dtype, "source": source}
    if repeated:
        field["repeated"] = True
    if name == "label":
        field["references"] = {"field": {"@id": f"{CLASSES}/label"}}
    return field


def _classes(f: DatasetFacts) -> dict:
    return {"@type": "cr:RecordSet", "@id": CLASSES, "name": CLASSES,
            "description": "the run's class names", "dataType": "sc:Enumeration",
            "key": {"@id": f"{CLASSES}/label"},
            "field": [{"@type": "cr:Field", "@id": f"{CLASSES}/label", "name": "label",
                       "dataType": "sc:Integer"},
                      {"@type": "cr:Field", "@id": f"{CLASSES}/name", "name": "name",
                       "dataType": "sc:Text"}],
            "data": [{f"{CLASSES}/label": i, f"{CLASSES}/name": n}
                     for i, n in enumerate(f.class_names)]}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("regene-ray")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _lineage(f: DatasetFacts) -> dict:
    source = f.source.url or f.source.name
    activity = {
        "@type": "prov:Activity",
        "name": "regene-ray mass generation",
        "description": f.method(),
        "prov:used": [{"@id": f"file:{f.spec['run']}" if "://" not in f.spec["run"]
                       else f.spec["run"], "name": "the ReGene run (classifier, decoder, "
                       "latent bank)", "sha256": f.identity["checkpoint_sha256"]}],
        "prov:wasAssociatedWith": {"@type": "prov:SoftwareAgent", "name": "regene-ray",
                                   "version": _version(),
                                   "description": f"output format: {f.identity.get('format')}"},
        "additionalProperty": [{"@type": "PropertyValue", "name": k, "value": str(v)}
                               for k, v in sorted(f.spec.items()) if k != "run"],
    }
    if f.command:
        activity["prov:used"].append({"name": "command", "description": f.command})
    return {"isBasedOn": source, "prov:wasDerivedFrom": [{"@id": source, "name": f.source.name}],
            "prov:wasGeneratedBy": activity}


def metadata(f: DatasetFacts) -> dict:
    """The croissant.json document."""
    licence = LICENCE_URLS.get(f.source.licence, f.source.licence)
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "name": f"regene-generations-{f.dataset}",
        "description": f"{f.rows:,} labelled images generated from {f.source.name}. "
                       f"{f.method()} Licence: {f.source.licence} ({f.source.licence_note}).",
        "conformsTo": "http://mlcommons.org/croissant/1.0",
        "license": licence,
        "url": f.out.display() if "://" in f.out.display() else f"file:{f.out.display()}",
        "version": "1.0.0",
        "datePublished": f.finished,
        "keywords": ["synthetic", "ReGene", "image classification", f.dataset],
        "citeAs": CITATION,
        **_lineage(f),
        "distribution": [{"@type": "cr:FileSet", "@id": FILESET, "name": FILESET,
                          "description": "the generated rows, one file per class and chunk",
                          "encodingFormat": "application/x-parquet",
                          "includes": "data/*.parquet"}],
        "recordSet": [_classes(f),
                      {"@type": "cr:RecordSet", "@id": RECORDS, "name": RECORDS,
                       "description": f"{f.rows:,} generations, one row each",
                       "key": {"@id": f"{RECORDS}/id"},
                       "field": [_field(*c) for c in COLUMNS]}],
    }
