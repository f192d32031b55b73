"""The hub model source: a pinned snapshot of a Hugging Face hub repository, resolved, chosen and checked.

What `download` (rule materialise_model, source `hub`) does, in a child process with a timeout (a hub that never
answers cannot hang the job; docs/reliability.md): `python -m lmcompare.models.hub REPO REVISION TRUST`, which
prints its answer as one JSON line (a fresh interpreter, not multiprocessing: a Snakemake script has no
`__main__` guard, so a spawned child re-running it would fail):

1. Resolve `revision` (a commit sha, a tag or a branch) to the commit sha with `HfApi.model_info(repo,
   revision=...)`. The sha is what the download asks for and what provenance.json records (`revision`; the
   configured name is `revision_requested`); a branch or tag is logged as a warning: branches move, pin the sha.
2. List the repository's files at that sha and download only what loading needs: the top-level config and
   tokenizer files and ONE weight format: safetensors where the repo has any, else PyTorch pickles
   (`pytorch_model*.bin`, checked with `torch.load(..., weights_only=True)`, which refuses anything but tensors
   and plain values). Model code (`*.py`) only with the model's `trust_remote_code: true`.
3. Download into the Hugging Face cache (HF_HOME / HF_HUB_CACHE: the user's own, shared with every other tool,
   so nothing is downloaded twice), then hard-link the snapshot's files into results/models/{model}/ (a copy only
   across file systems).

A private or gated repository is read with the token in `HF_TOKEN` (or the one `hf auth login` stored); the
endpoint is `HF_ENDPOINT` (default https://huggingface.co; a mirror such as olah works the same way).

Failures come back as one `HubFailure(kind, detail)`: `repo` (no such repository, or private/gated without a token
with access), `gated`, `revision` (the repo exists but has no such branch, tag or commit), `no-weights`,
`interrupted` (the connection broke off mid-way), `offline` (HF_HUB_OFFLINE=1 and not in the cache), `other`.
The parent turns each into one message naming the model and the fix (lmcompare.models.materialise.from_hub).

Adapter for hub servers that answer a missing revision like a missing repository (the olah mirror answers 401
RepositoryNotFound for an unknown branch and 500 for an unknown sha; the real hub answers 404
RevisionNotFound): when a revision lookup fails that way, `list_repo_refs(repo)` tells whether the repository
exists, and if it does the failure is reported as an unknown revision, with the repo's branches and tags.
"""

import fnmatch
import json
import os
import re
import sys

SHA = re.compile(r"^[0-9a-f]{40}$")

# top-level files that loading a model and its tokenizer reads (weights chosen separately)
SUPPORT_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "merges.txt", "vocab.*", "spiece.model",
                    "sentencepiece.bpe.model")
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
CODE_PATTERNS = ("*.py",)


class HubFailure(Exception):
    def __init__(self, kind: str, detail: str, **extra):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.extra = kind, detail, extra


def is_commit_sha(revision) -> bool:
    return bool(revision) and bool(SHA.match(str(revision)))


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def choose_files(files: list[str], trust_remote_code: bool = False) -> tuple[list[str], str]:
    """The files to download and the weight format ('safetensors' or 'pytorch-pickle'), from the repo's file list:
    top-level files only (subfolders hold other exports: onnx/, openvino/, 1_Pooling/ ...)."""
    top = [f for f in files if "/" not in f]
    safetensors = [f for f in top if _matches(f, SAFETENSORS_PATTERNS)]
    pickles = [f for f in top if _matches(f, PICKLE_PATTERNS)]
    if any(f.endswith(".safetensors") for f in safetensors):
        weights, fmt = safetensors, "safetensors"
    elif any(f.endswith(".bin") for f in pickles):
        weights, fmt = pickles, "pytorch-pickle"
    else:
        raise HubFailure("no-weights", f"no *.safetensors or pytorch_model*.bin among its top-level files "
                                       f"({', '.join(sorted(top)[:20]) or 'none'})")
    support = [f for f in top if _matches(f, SUPPORT_PATTERNS) and f not in weights
               and not f.endswith(".index.json")]
    code = [f for f in top if trust_remote_code and _matches(f, CODE_PATTERNS)]
    return sorted(set(support) | set(weights) | set(code)), fmt


def _refs(api, repo_id, repo_type=None):
    """(branches, tags) of a repo, or None when the repo cannot be listed (it does not exist for us). Tried twice:
    a server that answered the failed lookup with HTTP 500 may have closed the pooled connection."""
    from huggingface_hub import errors

    for attempt in range(2):
        try:
            refs = api.list_repo_refs(repo_id, repo_type=repo_type)
        except (errors.RepositoryNotFoundError, errors.GatedRepoError):
            return None
        except Exception:  # noqa: BLE001 - a broken connection: once more, then: the repository cannot be seen
            if attempt:
                return None
            continue
        return sorted(b.name for b in refs.branches), sorted(t.name for t in refs.tags)
    return None


def classify(err: Exception, api, repo_id: str, revision, repo_type=None) -> HubFailure:
    """One HubFailure for an exception of huggingface_hub (or the HTTP stack below it)."""
    from huggingface_hub import errors

    detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if isinstance(err, HubFailure):
        return err
    if isinstance(err, errors.GatedRepoError):
        return HubFailure("gated", detail)
    if isinstance(err, errors.LocalEntryNotFoundError) or type(err).__name__ == "OfflineModeIsEnabled":
        return HubFailure("offline", detail)
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, (errors.RepositoryNotFoundError, errors.RevisionNotFoundError)) or (
            isinstance(err, errors.HfHubHTTPError) and status in (404, 500)):
        refs = _refs(api, repo_id, repo_type)
        if refs is None:
            return HubFailure("repo", detail)
        return HubFailure("revision", detail, branches=refs[0], tags=refs[1])
    if isinstance(err, errors.HfHubHTTPError) and status is not None:
        return HubFailure("other", detail)
    if isinstance(err, (ConnectionError, TimeoutError, OSError)) or "connect" in type(err).__name__.lower() \
            or "incomplete" in type(err).__name__.lower() or "protocol" in type(err).__name__.lower() \
            or "read" in type(err).__name__.lower():
        return HubFailure("interrupted", detail)
    return HubFailure("other", detail)


def download(repo_id: str, revision: str, trust_remote_code: bool = False) -> dict:
    """Resolve, choose and download (steps 1-3 of the module docstring; not the hard-linking). Returns {sha,
    snapshot (the folder in the cache), files, weights_format, endpoint, cache}. Raises HubFailure."""
    from huggingface_hub import HfApi, constants, snapshot_download

    api = HfApi()
    where = {"endpoint": constants.ENDPOINT, "cache": constants.HF_HUB_CACHE}
    try:
        info = api.model_info(repo_id, revision=revision)
        sha = info.sha
        files = [s.rfilename for s in (info.siblings or [])] or api.list_repo_files(repo_id, revision=sha)
        names, fmt = choose_files(files, trust_remote_code)
        snapshot = snapshot_download(repo_id=repo_id, revision=sha, allow_patterns=names)
    except Exception as err:  # noqa: BLE001 - classified into one of a few kinds
        failure = classify(err, api, repo_id, revision)
        failure.extra.update(where)
        raise failure from None
    missing = [name for name in names if not os.path.exists(os.path.join(snapshot, name))]
    if missing:
        raise HubFailure("interrupted", f"files missing after the download: {missing}", **where)
    return {"sha": sha, "snapshot": snapshot, "files": names, "weights_format": fmt, **where}


def check_pickles(folder, files) -> None:
    """Each PyTorch pickle must load with weights_only=True (tensors and plain values only: no code runs)."""
    import pickle

    import torch

    for name in files:
        if name.endswith(".bin"):
            try:
                torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as err:
                raise HubFailure("unsafe-pickle", f"{name}: {str(err).splitlines()[0]}") from None


ANSWER = "lmcompare-hub-answer: "


def main(argv) -> None:
    """The child process: download(REPO, REVISION, TRUST) and print the answer (or the failure) as one JSON line."""
    repo_id, revision, trust = argv
    try:
        answer = {"status": "ok", **download(repo_id, revision, trust == "1")}
    except HubFailure as failure:
        answer = {"status": "error", "kind": failure.kind, "detail": failure.detail, **failure.extra}
    except Exception as err:  # noqa: BLE001 - reported to the parent as one clear message
        answer = {"status": "error", "kind": "other", "detail": f"{type(err).__name__}: {err}"}
    print(ANSWER + json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
