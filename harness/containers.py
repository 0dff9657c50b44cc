"""A Docker engine for the image tests, and the image built for real from deploy/Dockerfile.

The machine's engine when one answers, else a dockerd of the suite's own on a private
socket, without a bridge (containers use the host's network, so all traffic stays on
127.0.0.1). With no registry, the base image is made locally with debootstrap.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

# Kept between runs, as a system engine keeps its images: the base image and build cache.
DATA_ROOT = Path("/var/lib/saypi-docker")
RUN_DIR = Path("/run/saypi-docker")
BASE_IMAGE = "saypi-base:bookworm"
SUITE = "bookworm"
APT_SOURCES = Path("/etc/apt")


class Docker:
    """The docker client, talking to one engine."""

    def __init__(self, client: str, host: str):
        self.client = client
        self.host = host
        self.env = {**os.environ, "DOCKER_HOST": host}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True,
                 **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run([self.client, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... exited {done.returncode}:\n"
                               f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done

    def answers(self) -> bool:
        try:
            return self("version", "--format", "{{.Server.Version}}", timeout=10,
                        check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False


class Engine:
    """A Docker engine; stop() removes the containers run through it and stops the
    dockerd it started (by PID), leaving a machine's own engine running."""

    def __init__(self, docker: Docker, dockerd: subprocess.Popen | None = None):
        self.docker = docker
        self.dockerd = dockerd
        self.containers: list[str] = []

    def run(self, image: str, *command: str, env: dict[str, str] | None = None,
            options: tuple[str, ...] = (), detach: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """`docker run` on the host's network; the container is removed by stop()."""
        name = f"saypi-test-{uuid.uuid4().hex[:10]}"
        self.containers.append(name)
        env_args = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
        return self.docker("run", *(["-d"] if detach else []), "--name", name,
                           "--network", "host", *env_args, *options, image, *command,
                           timeout=timeout, check=False)

    def stop(self) -> None:
        for name in self.containers:
            self.docker("rm", "-f", name, check=False, timeout=60)
        if self.dockerd is not None and self.dockerd.poll() is None:
            self.dockerd.send_signal(signal.SIGTERM)  # it stops its own containerd
            try:
                self.dockerd.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.dockerd.pid, signal.SIGKILL)
                self.dockerd.wait(5)


def start_engine(log_path: Path) -> Engine | str:
    """An engine that answers, or why there is none (the reason to skip)."""
    client = shutil.which("docker")
    if client is None:
        return "no docker client installed (Debian: apt-get install docker.io)"
    own = f"unix://{RUN_DIR}/docker.sock"
    for host in (os.environ.get("DOCKER_HOST"), own, "unix:///var/run/docker.sock"):
        if host and Docker(client, host).answers():
            return Engine(Docker(client, host))
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if dockerd is None:
        return "no Docker engine runs and dockerd is not installed (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "no Docker engine runs and dockerd needs root to start one"
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    # setpriv: the engine gets SIGTERM when the test process dies, even by SIGKILL, so an
    # interrupted run leaves no dockerd behind (this is called from the main thread).
    guard = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
    process = subprocess.Popen(
        [*guard, dockerd, "--bridge=none", "--iptables=false", f"--data-root={DATA_ROOT}",
         f"--exec-root={RUN_DIR}/exec", f"--pidfile={RUN_DIR}/dockerd.pid", f"--host={own}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    log.close()
    engine = Engine(Docker(client, own), process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if engine.docker.answers():
            return engine
        time.sleep(0.2)
    engine.stop()
    return f"dockerd did not start:\n{log_path.read_text(errors='replace')[-2000:]}"


# --- the base image --------------------------------------------------------------------------
def debian_mirror(apt: Path = APT_SOURCES, suite: str = SUITE) -> str | None:
    """The first mirror the machine's apt sources name for `suite` (one-line or deb822)."""
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list")),
             *sorted((apt / "sources.list.d").glob("*.sources"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
                if ("deb" in fields.get("Types", "").split()
                        and suite in fields.get("Suites", "").split()
                        and fields.get("Enabled", "yes").lower() != "no"):
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    return None


def ensure_base_image(docker: Docker, workdir: Path) -> float | None:
    """Make BASE_IMAGE with debootstrap unless the engine has it; the seconds it took."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return None
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap",
                                                               path="/usr/sbin")
    mirror = debian_mirror()
    if debootstrap is None or mirror is None:
        raise RuntimeError(f"{BASE_IMAGE} is missing and cannot be made: debootstrap "
                           f"{'installed' if debootstrap else 'missing'}, Debian mirror in the "
                           f"apt sources {mirror or 'not found'} (apt-get install debootstrap)")
    started = time.monotonic()
    rootfs = workdir / "rootfs"
    try:
        done = subprocess.run(
            [debootstrap, "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             SUITE, str(rootfs), mirror], capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            docker("import", "-", BASE_IMAGE, stdin=tar.stdout, timeout=600)
        finally:
            tar.stdout.close()
            tar.wait(60)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return time.monotonic() - started


# --- the build ----------------------------------------------------------------------------
def build_context(root: Path, context: Path) -> None:
    """The repository as the build sees it: filtered by deploy/Dockerfile.dockerignore
    (whose patterns are plain names, paths and `**/name`)."""
    lines = (root / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip().rstrip("/") for line in lines
                if line.strip() and not line.startswith("#")]

    def ignore(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(root)
        return {name for name in names for pattern in patterns
                if (fnmatch.fnmatch(name, pattern[3:]) if pattern.startswith("**/")
                    else fnmatch.fnmatch(str(relative / name), pattern))}

    shutil.copytree(root, context, ignore=ignore, symlinks=True)


def server_requirements(root: Path) -> list[str]:
    """The server's dependencies (no extras) and what building SayPI itself needs."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    return [*project["project"]["dependencies"], *project["build-system"]["requires"]]


def fetch_wheels(docker: Docker, root: Path, wheels: Path) -> None:
    """Wheels fetched on the host for a build that reaches no package index. The image's
    own pip checks the set (its Python's markers may differ from this one's: redis wants
    async-timeout below 3.11.3) and names what is missing, which is fetched in turn."""
    wanted = server_requirements(root)
    for _ in range(5):
        subprocess.run([sys.executable, "-m", "pip", "-q", "wheel", "--wheel-dir", str(wheels),
                        *wanted], check=True, timeout=900, capture_output=True, text=True)
        check = docker("run", "--rm", "--network", "host", "-v", f"{wheels}:/wheels:ro",
                       BASE_IMAGE, "sh", "-c",
                       'python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -q --dry-run '
                       '--no-index --find-links /wheels "$@"', "sh", *server_requirements(root),
                       check=False, timeout=300)
        missing = re.findall(r"No matching distribution found for ([^;\s]+)",
                             check.stdout + check.stderr)
        if check.returncode == 0 or not missing:
            break
        wanted = missing
    if check.returncode != 0:
        raise RuntimeError(f"the wheels do not install in {BASE_IMAGE}:\n{check.stderr[-3000:]}")


def build_image(docker: Docker, root: Path, workdir: Path, tag: str) -> None:
    """deploy/Dockerfile on BASE_IMAGE, installing from wheels in the context."""
    context = workdir / "context"
    build_context(root, context)
    fetch_wheels(docker, root, context / "wheels")
    previous = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    docker("build", "--network", "host", "-f", str(context / "deploy" / "Dockerfile"),
           "--build-arg", f"BASE={BASE_IMAGE}", "--build-arg", "PIP_NO_INDEX=1",
           "--build-arg", "PIP_FIND_LINKS=/wheels", "-t", tag, str(context), timeout=1200)
    current = docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if previous and previous != current:  # the last run's image, now untagged
        docker("rmi", previous, check=False)
    shutil.rmtree(context, ignore_errors=True)
