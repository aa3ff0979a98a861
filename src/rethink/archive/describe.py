"""The bundle's descriptions: its environment, CITATION.cff, the RO-Crate metadata and the
Zenodo deposition metadata (both read from the first two)."""

import importlib.metadata
import json
import pathlib
import platform
import shutil
import subprocess
import sys

import yaml
from rocrate.rocrate import ROCrate

PAPER = {
    "type": "conference-paper",
    "title": "Understanding deep learning requires rethinking generalization",
    "authors": [
        {"family-names": "Zhang", "given-names": "Chiyuan"},
        {"family-names": "Bengio", "given-names": "Samy"},
        {"family-names": "Hardt", "given-names": "Moritz"},
        {"family-names": "Recht", "given-names": "Benjamin"},
        {"family-names": "Vinyals", "given-names": "Oriol"},
    ],
    "year": 2017,
    "conference": {"name": "International Conference on Learning Representations (ICLR)"},
    "url": "https://openreview.net/forum?id=Sy8gdB9xx",
    "identifiers": [{"type": "other", "value": "arXiv:1611.03530"}],
}
ARXIV = "arXiv:1611.03530"
# Workflow Run Crate 0.5 and the profiles it builds on (https://w3id.org/ro/wfrun/workflow/0.5)
PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate",
}


def environment(out_dir, cells):
    """pip freeze (conda's export too where conda runs), the versions that matter, and the
    devices the cells recorded (each cell's summary.json names its device and torch)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    (out_dir / "pip-freeze.txt").write_text(freeze.stdout)
    if shutil.which("conda"):
        export = subprocess.run(["conda", "list", "--export"], capture_output=True, text=True)
        if export.returncode == 0:
            (out_dir / "conda-export.txt").write_text(export.stdout)
    import torch  # the archive CLI, not the Snakefile: importing torch here is fine

    devices = sorted(
        {(c.get("device"), c.get("device_name"), c.get("torch_version")) for c in cells},
        key=lambda d: tuple(map(str, d)),
    )
    versions = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **{name: importlib.metadata.version(name) for name in ("snakemake", "h5py", "numpy", "bagit", "rocrate")},
        "cells": [{"device": d, "device_name": n, "torch_version": t} for d, n, t in devices],
        # pip freeze and the versions above are the archiving environment's: say whether the cells
        # ran with the same torch (a run on a GPU cluster archived elsewhere may not)
        "torch_matches_cells": all(t == torch.__version__ for _, _, t in devices),
    }
    (out_dir / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    return versions


def citation(settings, name, commit, date, repository):
    """CITATION.cff for the bundle: the results as a dataset, referencing the paper and the
    pipeline at the commit that produced them."""
    pipeline = {
        "type": "software",
        "title": "rethink: a reproduction pipeline for Zhang et al. (ICLR 2017)",
        "authors": settings["authors"],
        "version": commit,
        "commit": commit,
    }
    if repository:
        pipeline["repository-code"] = repository
    cff = {
        "cff-version": "1.2.0",
        "message": "If you use these results, please cite them, the paper they reproduce and the pipeline.",
        "type": "dataset",
        "title": f"{settings['title']} ({name})",
        "authors": settings["authors"],
        "version": name,
        "commit": commit,
        "date-released": date,
        "license": settings["license"],
        "keywords": ["deep learning", "generalization", "reproduction", "random labels"],
        "references": [PAPER, pipeline],
    }
    return yaml.safe_dump(cff, sort_keys=False, allow_unicode=True)


def _person(author):
    if "name" in author:
        return {"@id": f"#{author['name']}", "@type": "Organization", "name": author["name"]}
    name = f"{author['given-names']} {author['family-names']}"
    return {"@id": author.get("orcid", f"#{name}"), "@type": "Person", "name": name}


def crate(out_dir, manifest, settings, results, configs, inputs, start, end):
    """ro-crate-metadata.json (Workflow Run Crate 0.5): root conformsTo the profiles, mainEntity
    the Snakefile, one CreateAction with instrument = the workflow, object = config files and
    input shards, result = the result files; written by the rocrate library."""
    rc = ROCrate(version="1.1")
    rc.name = f"{settings['title']} ({manifest['name']})"
    rc.description = (
        "Results of the rethink pipeline (a Snakemake reproduction of Zhang et al., ICLR 2017) for the "
        f"config {', '.join(manifest['configfiles'])} at commit {manifest['commit']}, with the workflow source, "
        "the environment and the Snakemake report."
    )
    rc.license = settings["license"]
    rc.root_dataset["datePublished"] = manifest["date"]
    rc.root_dataset["conformsTo"] = [{"@id": uri} for uri in PROFILES]
    for uri, title in PROFILES.items():
        rc.add_jsonld({"@id": uri, "@type": "CreativeWork", "name": title, "version": uri.rsplit("/", 1)[1]})
    authors = [rc.add_jsonld(_person(a)) for a in settings["authors"]]
    rc.root_dataset["author"] = _single(authors)
    workflow = rc.add_workflow(
        dest_path="source/Snakefile",
        main=True,
        lang="snakemake",
        properties={"name": "rethink Snakemake workflow", "version": manifest["commit"]},
    )
    for path, text in (("CITATION.cff", "Citation"), ("report.html", "Snakemake report"), ("archive.json", "Manifest")):
        rc.add_file(dest_path=path, properties={"name": text})
    objects = [rc.add_file(dest_path=p, properties={"name": f"config file {p}"}) for p in configs]
    objects += [rc.add_file(dest_path=p, properties=props) for p, props in inputs]
    outputs = [rc.add_file(dest_path=p) for p in results]
    action = rc.add_action(
        workflow,
        identifier="#run",
        object=objects,
        result=outputs,
        properties={"name": f"Run of the rethink workflow ({manifest['name']})", "startTime": start, "endTime": end},
    )
    action["object"], action["result"] = _single(objects), _single(outputs)
    rc.metadata.write(str(out_dir))


def _single(entities):
    """RO-Crate 1.1 recommends a single value, not a one-element list."""
    return entities[0] if len(entities) == 1 else entities


def zenodo_metadata(cff, crate_json, tarball, size, digest):
    """Zenodo's deposition metadata (REST API `metadata` object) from CITATION.cff and the crate."""

    def creator(a):
        return {"name": a["name"]} if "name" in a else {"name": f"{a['family-names']}, {a['given-names']}"}

    root = next(e for e in crate_json["@graph"] if e["@id"] == "./")
    return {
        "metadata": {
            "upload_type": "dataset",
            "title": cff["title"],
            "creators": [creator(a) for a in cff["authors"]],
            "description": root["description"],
            "publication_date": str(cff["date-released"]),
            "version": cff["version"],
            "license": cff["license"].lower(),
            "keywords": cff["keywords"],
            "related_identifiers": [
                {"identifier": ARXIV, "relation": "isSupplementTo", "scheme": "arxiv", "resource_type": "publication"}
            ],
            "notes": f"Produced by the rethink pipeline at commit {cff['commit']}.",
        },
        "files": [{"path": str(tarball), "size": size, "sha256": digest}],
    }
