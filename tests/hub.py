"""A real Hugging Face-compatible hub on 127.0.0.1 for the tests: olah 0.5.4 (a self-hosted hub mirror, installed
by setup.sh into .hub-venv/, a venv of its own) serving git repositories that the tests build on the spot.

Importing this module (tests/conftest.py does, first thing) points the Hugging Face clients at the local hub
before any of them is imported (huggingface_hub, transformers and datasets read these when imported):
HF_ENDPOINT=http://127.0.0.1:<a free port of this process>, HF_HOME a temporary folder (no user cache is read or
written), HF_TOKEN and the offline switches unset. Each pytest process (each xdist worker) has its own port and
server; the repositories are built once per test run in the folder the workers share (conftest.built_once), so
their commit shas are the same in every worker.

- `hub` (session fixture): starts `olah-cli -c olah.toml` on that port, waits until it answers, yields a `Hub`
  (endpoint, mirrors folder, `sha(repo, ref)`), stops it at the end of the session. Fails (never skips) when
  .hub-venv/bin/olah-cli is missing: `bash setup.sh` installs it.
- The repositories: `MODEL_REPOS` / `DATASET_REPOS`, {"ORG/NAME": builder(folder, tiny_models)}; a builder writes
  the files of the first commit and may return a list of (message, edit, tag) for later commits. To serve
  another repository, add a builder here. The papers' zoo and corpora under their real ids (tests/zoo.py) are
  registered the same way.

olah's offline mode has gaps (/work/shared/HUB.md): `model_info` with no revision and AutoTokenizer on a branch
answer RepositoryNotFound; an unknown revision answers 401 or 500 instead of 404. The library never calls the
hub without a revision (revision is required) and downloads by the resolved sha; lmcompare.models.hub tells an
unknown revision from an unknown repository with list_repo_refs.
"""
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import zoo

PROJECT = Path(__file__).resolve().parents[1]
OLAH = PROJECT / ".hub-venv" / "bin" / "olah-cli"
ORG = "lmcompare-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _point_clients_at_the_local_hub() -> int:
    """Set the Hugging Face clients' environment for this process; returns the port the hub will listen on."""
    process = os.environ.get("PYTEST_XDIST_WORKER", "main")
    mark = os.environ.get("LMCOMPARE_TEST_HUB", "").split(":")
    if len(mark) == 2 and mark[0] == process:  # a child of this process (a spawned download): the same hub
        return int(mark[1])
    if "huggingface_hub" in sys.modules:  # too late: its constants were read from the environment already
        raise RuntimeError("tests/hub.py must be imported before huggingface_hub (first thing in conftest.py)")
    port = _free_port()
    home = tempfile.mkdtemp(prefix="lmcompare-hf-home-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["LMCOMPARE_TEST_HUB"] = f"{process}:{port}"
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN_PATH"):
        os.environ.pop(key, None)
    os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=home, HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="10")
    return port


PORT = _point_clients_at_the_local_hub()
ENDPOINT = os.environ["HF_ENDPOINT"]


# ------------------------------------------------------------------------------------------ repositories
def _git(folder, *args, env=None):
    stamp = "2026-01-01T00:00:00+0000"
    base = dict(os.environ, GIT_AUTHOR_NAME="lmcompare tests", GIT_AUTHOR_EMAIL="tests@lmcompare.invalid",
                GIT_COMMITTER_NAME="lmcompare tests", GIT_COMMITTER_EMAIL="tests@lmcompare.invalid",
                GIT_AUTHOR_DATE=stamp, GIT_COMMITTER_DATE=stamp, GIT_CONFIG_GLOBAL=os.devnull,
                GIT_CONFIG_NOSYSTEM="1")
    return subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, text=True,
                          env={**base, **(env or {})}).stdout.strip()


def _commit_all(folder, message):
    _git(folder, "add", "-A")
    _git(folder, "commit", "-q", "-m", message)


def make_git_repo(folder: Path, write, *later) -> None:
    """A git repository on branch main: `write(folder)` makes the first commit; each of `later` is
    (message, edit(folder), tag or None), committed in order; a tag marks the commit it follows."""
    folder.mkdir(parents=True)
    _git(folder, "init", "-q", "-b", "main")
    write(folder)
    _commit_all(folder, "first commit")
    for message, edit, tag in later:
        if edit is not None:
            edit(folder)
            _commit_all(folder, message)
        if tag:
            _git(folder, "tag", tag)


def _copy_model(source):
    def write(folder):
        for path in Path(source).iterdir():
            shutil.copy2(path, folder / path.name)
    return write


def _pickle_weights(folder):
    """pytorch_model.bin with the same tensors as model.safetensors (a state dict: loads with weights_only=True)."""
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")


def _readme(text):
    def edit(folder):
        (folder / "README.md").write_text(text)
    return edit


def tiny_bert_repo(folder, tiny_models):
    """tiny-bert with both weight formats and a file of model code; tag v1.0 on the first commit, main one commit later (a README)."""
    def write(f):
        _copy_model(tiny_models["bert"])(f)
        _pickle_weights(f)
        (f / "README.md").write_text("---\nlicense: mit\n---\ntiny-bert for the lmcompare tests\n")
        (f / "extra_code.py").write_text("# model code: downloaded only with trust_remote_code\n")
    make_git_repo(folder, write, ("tag v1.0", None, "v1.0"),
                  ("update the model card", _readme("---\nlicense: mit\n---\ntiny-bert, second commit\n"), None))


def pickle_only_repo(folder, tiny_models):
    """tiny-roberta with PyTorch pickle weights only (no safetensors)."""
    def write(f):
        _copy_model(tiny_models["roberta"])(f)
        _pickle_weights(f)
        (f / "model.safetensors").unlink()
    make_git_repo(folder, write)


class _RunsCode:
    """Pickled as a call of exec: loading it without weights_only would run the code (write a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the pickle ran code')",)


def unsafe_pickle_repo(folder, tiny_models):
    """tiny-bert's config and tokenizer with a pytorch_model.bin that runs code when unpickled (it would write
    UNSAFE_MARKER next to the mirrors folder); no safetensors."""
    import torch
    from safetensors.torch import load_file

    def write(f):
        _copy_model(tiny_models["bert"])(f)
        state = load_file(f / "model.safetensors")
        (f / "model.safetensors").unlink()
        state["payload"] = _RunsCode(unsafe_marker(folder.parents[2]))
        torch.save(state, f / "pytorch_model.bin")
    make_git_repo(folder, write)


def unsafe_marker(mirrors: Path) -> Path:
    return mirrors.parent / f"{mirrors.name}.pickle-ran-code"


CUSTOM_CONFIG_CODE = """from transformers import PretrainedConfig


class CustomConfig(PretrainedConfig):
    model_type = "lmcompare-custom"
"""


def custom_code_repo(folder, tiny_models):
    """tiny-bert's files with a config of a model type transformers does not know, whose class is in the repo's
    own code (configuration_custom.py, named by auto_map): it loads only with trust_remote_code."""
    import json

    def write(f):
        _copy_model(tiny_models["bert"])(f)
        config = json.loads((f / "config.json").read_text())
        config.update(model_type="lmcompare-custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
        (f / "config.json").write_text(json.dumps(config, indent=2))
        (f / "configuration_custom.py").write_text(CUSTOM_CONFIG_CODE)
    make_git_repo(folder, write)


def no_weights_repo(folder, tiny_models):
    """Config and tokenizer of tiny-bert, no weight file."""
    def write(f):
        _copy_model(tiny_models["bert"])(f)
        (f / "model.safetensors").unlink()
    make_git_repo(folder, write)


def slow_tokenizer_repo(folder, tiny_models):
    """tiny-bert's weights with a tokenizer that exists only in Python (ByT5's): no character offsets."""
    import json

    def write(f):
        _copy_model(tiny_models["bert"])(f)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            (f / name).unlink(missing_ok=True)
        (f / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    make_git_repo(folder, write)


GLUE_LIKE = {  # config -> split -> (sentences, labels); label names per config
    "sst2": {"train": (["a fine film", "a dull film", "loved it", "hated it", "superb acting", "boring plot"],
                       [1, 0, 1, 0, 1, 0]),
             "validation": (["not bad at all", "truly awful", "great fun", "so slow"], [1, 0, 1, 0])},
    "cola": {"train": (["the cat sat", "cat the sat", "she runs", "runs she the"], [1, 0, 1, 0]),
             "validation": (["he left", "left he the"], [1, 0])},
}
GLUE_LABELS = {"sst2": ["negative", "positive"], "cola": ["unacceptable", "acceptable"]}


def glue_like_repo(folder, tiny_models):
    """A GLUE-like dataset repo: two configs, train/validation Parquet files each, a README whose YAML header
    declares the configs (as the hub's Parquet conversions of GLUE do); label a ClassLabel."""
    import datasets

    def write(f):
        header = ["---", "configs:"]
        for config, splits in GLUE_LIKE.items():
            header += [f"- config_name: {config}", "  data_files:"]
            for split, (texts, labels) in splits.items():
                features = datasets.Features({"sentence": datasets.Value("string"),
                                              "label": datasets.ClassLabel(names=GLUE_LABELS[config]),
                                              "idx": datasets.Value("int32")})
                part = datasets.Dataset.from_dict({"sentence": texts, "label": labels, "idx": list(range(len(texts)))},
                                                  features=features)
                (f / config).mkdir(exist_ok=True)
                part.to_parquet(str(f / config / f"{split}-00000-of-00001.parquet"))
                header += [f"  - split: {split}", f"    path: {config}/{split}-00000-of-00001.parquet"]
        (f / "README.md").write_text("\n".join(header + ["---", "A GLUE-like dataset for the lmcompare tests.", ""]))
    make_git_repo(folder, write, ("tag v1.0", None, "v1.0"))


MODEL_REPOS = {f"{ORG}/tiny-bert": tiny_bert_repo, f"{ORG}/tiny-roberta-pickle": pickle_only_repo,
               f"{ORG}/no-weights": no_weights_repo,
               f"{ORG}/unsafe-pickle": unsafe_pickle_repo, f"{ORG}/custom-code": custom_code_repo,
               f"{ORG}/slow-tokenizer": slow_tokenizer_repo, **zoo.zoo_model_repos()}
DATASET_REPOS = {f"{ORG}/glue-like": glue_like_repo, **zoo.DATASET_REPOS}


def build_mirrors(root: Path, tiny_models) -> None:
    """root/models/ORG/NAME and root/datasets/ORG/NAME, one git repository each."""
    for kind, repos in (("models", MODEL_REPOS), ("datasets", DATASET_REPOS)):
        for repo, builder in repos.items():
            builder(root / kind / repo, tiny_models)


# ------------------------------------------------------------------------------------------------- server
OLAH_TOML = """[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{repos}"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
mirrors-path = ["{mirrors}"]

[accessibility]
offline = true
"""


@dataclass
class Hub:
    endpoint: str
    port: int
    mirrors: Path
    process: subprocess.Popen

    def sha(self, repo: str, ref: str = "main", kind: str = "models") -> str:
        """The commit sha of a branch or tag of a served repository (read from its git repository)."""
        return _git(self.mirrors / kind / repo, "rev-parse", f"{ref}^{{commit}}")


def start_olah(mirrors: Path, work: Path, port: int, timeout_s: float = 30) -> subprocess.Popen:
    """olah-cli serving `mirrors` on 127.0.0.1:port; returns once it answers (its log in work/olah.log)."""
    if not OLAH.exists():
        pytest.fail(f"{OLAH} is missing: the hub tests need olah in .hub-venv/; run `bash setup.sh` (it installs "
                    f"olah==0.5.4 there).", pytrace=False)
    work.mkdir(parents=True, exist_ok=True)
    (work / "olah.toml").write_text(OLAH_TOML.format(port=port, repos=work / "repos", mirrors=mirrors))
    log = open(work / "olah.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "VIRTUAL_ENV"))}
    process = subprocess.Popen([str(OLAH), "-c", str(work / "olah.toml")], cwd=work, stdout=log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    probe = f"http://127.0.0.1:{port}/api/models/{ORG}/tiny-bert/revision/main"
    while True:
        if process.poll() is not None:
            pytest.fail(f"olah exited ({process.returncode}) before it answered:\n"
                        f"{(work / 'olah.log').read_text()[-3000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(probe, timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_olah(process)
            pytest.fail(f"olah did not answer {probe} within {timeout_s} s:\n"
                        f"{(work / 'olah.log').read_text()[-3000:]}", pytrace=False)
        time.sleep(0.1)


def stop_olah(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def hub(tmp_path_factory, tiny_models):
    """The local hub of this pytest process (see the module docstring)."""
    from tests.conftest import built_once

    mirrors = built_once(tmp_path_factory, "hub-mirrors", lambda folder: build_mirrors(folder, tiny_models))
    import huggingface_hub.constants

    assert huggingface_hub.constants.ENDPOINT == ENDPOINT, "huggingface_hub was imported before tests/hub.py"
    process = start_olah(mirrors, tmp_path_factory.mktemp("olah"), PORT)
    atexit.register(stop_olah, process)  # also when the session ends without its teardown (an interrupted run)
    yield Hub(ENDPOINT, PORT, mirrors, process)
    stop_olah(process)


# ---------------------------------------------------------------------------- a hub that dies mid-download
class DyingProxy:
    """A forwarding HTTP proxy in front of the hub that records each request's headers and, on the first GET of
    a file whose path ends in `cut_suffix`, sends the headers and half of the body, then closes the connection
    and stops listening: the hub server dying in the middle of a download. `endpoint` is what HF_ENDPOINT
    names; `close()` stops it (if it has not died already)."""

    def __init__(self, upstream_port: int, cut_suffix: str | None = None):
        import http.client
        import http.server
        import threading

        proxy = self
        self.requests, self.died = [], threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                proxy.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "accept-encoding")}
                upstream.request(self.command, self.path, headers=headers)
                answer = upstream.getresponse()
                body = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(body)))
                cut = (cut_suffix and self.command == "GET" and self.path.endswith(cut_suffix)
                       and "/resolve/" in self.path and len(body) > 1)
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                if not cut:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                proxy.died.set()
                threading.Thread(target=proxy._die, daemon=True).start()

            do_GET = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _die(self):
        self.server.shutdown()
        self.server.server_close()  # refuse new connections from now on

    def close(self):
        if not self.died.is_set():
            self._die()
