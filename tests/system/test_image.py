"""The container image, built from the Containerfile and run as production runs it: uid 10001, a read-only
root, everything written on the data volume. serve runs from the image; the admin CLI runs from the image
against the same volume; a signed fact goes in over HTTP and its balance comes back.

These machines reach no registry of images, so the base is made from Debian's packages (mmdebstrap) and
imported, and kept by a tag between runs. Needs root, podman, runc and mmdebstrap: without them the tests
skip saying why, and with RECIPROCITY_REQUIRE_IMAGE=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Sender, envelope, give
from tests.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # a cold build downloads the base and the wheels

REPOSITORY = Path(__file__).resolve().parents[2]
IMAGE_REQUIRED = os.environ.get("RECIPROCITY_REQUIRE_IMAGE") == "1"
IMAGE = "localhost/reciprocity:test"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
# Debian's place for a machine's own CAs (an intercepting proxy's, say); the base gets them too.
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
PIP_USES_SYSTEM_CAS = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
# runc, not crun; no default ulimits: on these machines crun and podman's default ulimits fail to start.
RUN = ("podman", "run", "--runtime=runc", "--network=host", "--read-only")
# No tmpfs on /tmp, /var/tmp or /run either: proves the volume is the only place anything is written.
STRICTLY_READ_ONLY = "--read-only-tmpfs=false"
DATA = "/var/lib/reciprocity"
# Each process in the container with its real uid, read from /proc inside it (the image has no ps).
LIST_PROCESSES = """
import pathlib
for status in pathlib.Path("/proc").glob("[0-9]*/status"):
    try:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
    except OSError:
        continue  # it ended meanwhile
    print(fields["Uid"].split()[0], fields["Name"].strip())
"""


def _missing() -> str | None:
    absent = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if absent:
        return f"no {', '.join(absent)} on PATH (.ci/run installs them with apt)"
    if os.geteuid() != 0:
        return "building the base with mmdebstrap and running podman's runc here need root"
    return None


def _run(*command: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """podman configured for these machines, for the tests of this module (and restored after them)."""
    reason = _missing()
    if reason:
        if IMAGE_REQUIRED:
            pytest.fail(f"{reason} (RECIPROCITY_REQUIRE_IMAGE=1 makes the image test mandatory)")
        pytest.skip(reason)
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTAINERS_CONF", str(conf))
        yield


@pytest.fixture(scope="module")
def base_image(podman: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Debian bookworm with python3, kept by a tag that changes when its packages or the CAs it adds do."""
    local_cas = sorted(LOCAL_CAS.glob("*.crt"))
    recipe = hashlib.sha256(BASE_PACKAGES.encode())
    for ca in local_cas:
        recipe.update(ca.read_bytes())
    tag = f"localhost/reciprocity-test-base:bookworm-{recipe.hexdigest()[:12]}"
    if _run("podman", "image", "exists", tag, check=False).returncode == 0:
        return tag
    hooks = []
    if local_cas:  # the package traffic of this machine needs them: pip trusts the system's bundle, not its own
        hooks += ["--customize-hook=copy-in " + " ".join(map(str, local_cas)) + f" {LOCAL_CAS}"]
        hooks += ['--customize-hook=chroot "$1" update-ca-certificates']
        hooks += [f"--customize-hook=printf '{PIP_USES_SYSTEM_CAS}' > \"$1/etc/pip.conf\""]
    tarball = tmp_path_factory.mktemp("base") / "base.tar"
    _run("mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", *hooks, "bookworm", str(tarball),
         timeout_s=900)  # fmt: skip
    _run("podman", "import", "--quiet", str(tarball), tag, timeout_s=300)
    tarball.unlink()  # 200 MB that pytest would otherwise keep with its last three runs
    return tag


@pytest.fixture(scope="module")
def image(base_image: str) -> str:
    previous = _image_id(IMAGE)
    _run("podman", "build", "--quiet", "--isolation=chroot", f"--build-arg=BASE={base_image}", f"--tag={IMAGE}",
         "--file", str(REPOSITORY / "Containerfile"), str(REPOSITORY), timeout_s=900)  # fmt: skip
    if previous and previous != _image_id(IMAGE):  # the last run's, untagged now: its venv is 250 MB of layer
        _run("podman", "image", "rm", previous, check=False)
    return IMAGE


def _image_id(name: str) -> str:
    return _run("podman", "image", "inspect", "--format={{.Id}}", name, check=False).stdout.strip()


@pytest.fixture
def volume(image: str) -> Iterator[str]:
    name = f"reciprocity-test-{uuid.uuid4().hex[:12]}"
    _run("podman", "volume", "create", name)
    yield name
    _run("podman", "volume", "rm", "--force", name, check=False)


def test_the_image_says_its_version(image: str) -> None:
    done = _run(*RUN, "--rm", STRICTLY_READ_ONLY, image, "--version")
    assert done.stdout == f"reciprocity {metadata.version('reciprocity-ledger')}\n"


class ImageServer:
    """`reciprocity serve` from the image, in a container of its own, with the admin CLI beside it."""

    def __init__(self, image: str, volume: str) -> None:
        self.image = image
        self.name = f"{volume}-serve"
        self.port = free_port()
        # Host networking: serve's HTTP and its embedded NATS both need ports nobody else uses.
        self.env = {"RECIPROCITY_HTTP_HOST": "127.0.0.1", "RECIPROCITY_HTTP_PORT": str(self.port),
                    "RECIPROCITY_NATS_PORT": str(free_port()), "RECIPROCITY_LOG_FORMAT": "json"}  # fmt: skip
        self.options = [STRICTLY_READ_ONLY, f"--volume={volume}:{DATA}"]
        self.options += [f"--env={name}={value}" for name, value in self.env.items()]

    def start(self) -> ImageServer:
        _run(*RUN, "--detach", f"--name={self.name}", *self.options, self.image)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = _run("podman", "inspect", "--format={{.State.Running}}", self.name, check=False).stdout.strip()
            if state == "false":
                raise AssertionError(f"serve stopped:\n{self.logs()}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"serve was not ready in 60 s:\n{self.logs()}")

    def stop(self) -> None:
        _run("podman", "rm", "--force", "--time=10", self.name, check=False)

    def logs(self) -> str:
        done = _run("podman", "logs", self.name, check=False)
        return done.stdout[-4000:] + done.stderr[-4000:]

    def cli_json(self, *args: str) -> dict[str, Any]:
        """An admin command from the image, in a container of its own on the same volume, as an operator runs it."""
        done = _run(*RUN, "--rm", *self.options, self.image, *args, "--json")
        return json.loads(done.stdout)

    def in_container(self, *command: str) -> subprocess.CompletedProcess[str]:
        return _run("podman", "exec", self.name, *command, check=False)

    def get_when(self, path: str, sender: Sender, position: int) -> dict[str, Any]:
        """The answer once the view has followed the log to `position` (views follow a moment later)."""
        deadline = time.monotonic() + 30
        status, answer = self.request("GET", path, None, sender.read_headers())
        while not (status == 200 and answer["position"] >= position) and time.monotonic() < deadline:
            time.sleep(0.2)
            status, answer = self.request("GET", path, None, sender.read_headers())
        assert status == 200 and answer["position"] >= position, (status, answer, self.logs())
        return answer

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", body, headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read() or b"null")


@pytest.fixture
def server(image: str, volume: str) -> Iterator[ImageServer]:
    running = ImageServer(image, volume)
    yield running.start()
    running.stop()


def test_serve_from_the_image_records_a_signed_fact_and_answers_its_balance(server: ImageServer) -> None:
    server.cli_json("tenant", "create", "acme")
    secret = server.cli_json("source", "add", "acme", "crm")["secret"]
    read_key = server.cli_json("key", "add", "acme", "--scope", "read")["key"]
    sender = Sender("acme", "crm", secret, read_key)

    body = json.dumps(envelope(give("g1", "ann", "bob", value=3))).encode()
    status, answer = server.request("POST", sender.path, body, sender.headers(body))
    assert status == 201, (answer, server.logs())
    assert answer["status"] == "recorded"

    balance = server.get_when("/v1/tenants/acme/participants/ann/balance", sender, answer["position"])
    assert (balance["given"], balance["balance"]) == ({"count": 1, "value": "3"}, "3")
    # Influence is computed with numpy and scipy, in a process of its own: their wheels work in the image.
    influence = server.get_when("/v1/tenants/acme/participants/bob/influence", sender, answer["position"])
    assert influence["score"] > 0 and influence["rank"] >= 1


def test_serve_runs_as_uid_10001_on_a_read_only_root(server: ImageServer) -> None:
    identity = server.in_container("id", "-u")
    assert identity.stdout.strip() == "10001"
    assert _run("podman", "inspect", "--format={{.HostConfig.ReadonlyRootfs}}", server.name).stdout.strip() == "true"
    refused = server.in_container("touch", "/opt/reciprocity/written")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    # serve, its nats-server and its background process all run as that user, and write on the volume.
    processes = [line.split() for line in server.in_container("python3", "-c", LIST_PROCESSES).stdout.splitlines()]
    assert {uid for uid, _ in processes} == {"10001"}, processes
    assert "nats-server" in {name for _, name in processes} and len(processes) >= 4, processes
    assert server.in_container("test", "-s", f"{DATA}/nats/nats-server.pid").returncode == 0
