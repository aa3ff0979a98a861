"""Prepare a Zenodo deposition of a bundle (metadata JSON from CITATION.cff and the RO-Crate,
the tarball as its file), and upload it as a draft where there is network and a token."""

import json
import os
import pathlib
import urllib.request

import yaml

from rethink import fileio
from rethink.archive import bundle, describe
from rethink.errors import RethinkError

SERVERS = {"zenodo": "https://zenodo.org", "sandbox": "https://sandbox.zenodo.org"}


def prepare(folder):
    """Write <name>.zenodo.json next to the bundle and return its content."""
    folder = pathlib.Path(folder)
    tarball = folder.with_suffix(".tar.gz")
    if not (folder / "bagit.txt").is_file() or not tarball.is_file():
        raise RethinkError(
            f"{folder}: expected a bundle folder with its {tarball.name} beside it (rethink.archive build)"
        )
    bundle.check(folder)
    cff = yaml.safe_load((folder / "data" / "CITATION.cff").read_text())
    crate = json.loads((folder / "data" / "ro-crate-metadata.json").read_text())
    deposition = describe.zenodo_metadata(cff, crate, tarball, tarball.stat().st_size, bundle.sha256(tarball))
    out = folder.with_suffix(".zenodo.json")
    fileio.write_text_atomic(out, json.dumps(deposition, indent=1) + "\n")
    return out, deposition


def _call(method, url, token, data=None, content_type="application/json"):
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read() or b"{}")


def upload(deposition, server):
    """Create a draft deposition, upload the tarball to its bucket, set the metadata. Publishing
    stays a click on the draft's page: a published record cannot be deleted."""
    token = os.environ.get("ZENODO_TOKEN")
    if not token:
        raise RethinkError("ZENODO_TOKEN is not set (a personal token with the deposit:write scope)")
    base = SERVERS[server]
    draft = _call("POST", f"{base}/api/deposit/depositions", token, b"{}")
    for entry in deposition["files"]:
        path = pathlib.Path(entry["path"])
        with open(path, "rb") as fh:
            _call("PUT", f"{draft['links']['bucket']}/{path.name}", token, fh, "application/octet-stream")
    body = json.dumps({"metadata": deposition["metadata"]}).encode()
    _call("PUT", draft["links"]["self"], token, body)
    return draft["links"]["html"]
