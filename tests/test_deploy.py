"""deploy/: the container image, the Compose file and the Kubernetes manifests, checked offline (no Docker daemon
or cluster here): the Compose file against the Compose specification's schema, the manifests against Kubernetes'
(kubernetes-validate), and every container's command against the parser of the Flower 1.42 console script its
image runs, with the partitions, keys and certificates fedsim makes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import flwr
import pytest
import yaml
from flwr.common.config import parse_config_args
from flwr.supercore.cli.flower_superexec import _parse_args as superexec_parser
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as superlink_parser
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as supernode_parser
from helpers.runs import ROOT

from fedsim.runtimes.certs import make_all
from fedsim.runtimes.staging import staged_app

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
PARSERS = {"superlink": superlink_parser, "supernode": supernode_parser, "superexec": superexec_parser}
FEDSIM_IMAGE = f"fedsim-superexec:{flwr.__version__}"
DEFAULT = re.compile(r"\$\{\w+:-([^}]*)\}")  # Compose's ${VARIABLE:-default}, as it reads with VARIABLE unset


def containers() -> list[tuple[str, str, list[str]]]:
    """(where, image, arguments) of every container deploy/ runs Flower's console script in: each Compose
    service and each container of a Kubernetes pod, but those with a command of their own (a shell)."""
    found = []
    for name, service in yaml.safe_load(COMPOSE.read_text())["services"].items():
        if "entrypoint" not in service:
            found.append((f"compose {name}", service["image"], [DEFAULT.sub(r"\1", a) for a in service["command"]]))
    for path in MANIFESTS:
        for resource in yaml.safe_load_all(path.read_text()):
            spec = resource.get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                if "command" not in container:
                    found.append((f"k8s/{path.name} {container['name']}", container["image"], container["args"]))
    return found


def role(image: str) -> str:
    """The console script an image runs: Flower's own images by name, fedsim's (deploy/Dockerfile) a SuperExec."""
    return "superexec" if image == FEDSIM_IMAGE else image.split("/")[1].split(":")[0]


def test_the_compose_file_follows_the_compose_specification():
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_kubernetes_manifests_follow_kubernetes_schemas_strictly():
    checked = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, MANIFESTS)], capture_output=True, text=True
    )
    assert checked.returncode == 0 and "passed" in checked.stdout, checked.stdout + checked.stderr


def test_a_schema_check_fails_on_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  superlink:\n    image: 3\n    ports: yes\n")
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
    )
    assert checked.returncode != 0


@pytest.mark.parametrize("where, image, args", containers(), ids=[c[0] for c in containers()])
def test_each_containers_arguments_are_ones_its_flower_console_script_takes(where, image, args):
    assert image in (f"flwr/{role(image)}:{flwr.__version__}", FEDSIM_IMAGE)
    parsed = PARSERS[role(image)]().parse_args(args)  # argparse exits on an argument it does not take
    if role(image) == "superexec":
        assert parsed.runtime_api_address and (parsed.insecure or parsed.root_certificates)
    if role(image) == "superlink":
        assert parsed.enable_supernode_auth and parsed.isolation == "process" and parsed.ssl_certfile


def test_every_supernode_has_its_own_partition_and_key_and_the_same_count():
    for source in ("compose", "k8s"):
        nodes = [args for where, image, args in containers() if where.startswith(source) and role(image) == "supernode"]
        assert len(nodes) >= 2
        parsed = [supernode_parser().parse_args(args) for args in nodes]
        configs = [parse_config_args([p.node_config]) for p in parsed]
        assert sorted(c["partition-id"] for c in configs) == list(range(len(nodes)))
        assert {c["num-partitions"] for c in configs} == {len(nodes)}
        for config, node in zip(configs, parsed, strict=True):
            assert Path(node.auth_supernode_private_key).name == f"node_{config['partition-id']}"


def test_the_certificates_and_keys_deploy_names_are_the_ones_fedsims_certs_command_makes(tmp_path):
    make_all(tmp_path, hosts=("superlink", "localhost"), num_nodes=2)
    made = {path.name for path in tmp_path.iterdir()}
    text = COMPOSE.read_text() + "".join(path.read_text() for path in MANIFESTS)
    named = set(re.findall(r"certificates/([\w.]+)", text)) | set(re.findall(r"key: ([\w.]+), path", text))
    assert named - {"node_"} <= made, named - made


def test_the_image_holds_what_flwr_run_sends_and_runs_flowers_superexec(tmp_path):
    """The app's FAB draws on what staged_app hands `flwr run`; the image installs the same, and its entry point is
    Flower's SuperExec, on Flower's image of the version fedsim pins."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = {
        Path(part).name for line in dockerfile.splitlines() if line.startswith("COPY") for part in line.split()[1:-1]
    }
    sent = {path.name for path in staged_app(ROOT, tmp_path / "app").iterdir()} - {".gitignore"}
    assert sent <= copied
    assert f"ARG FLWR_VERSION={flwr.__version__}" in dockerfile and "FROM flwr/superexec:${FLWR_VERSION}" in dockerfile
    assert 'ENTRYPOINT ["flower-superexec"]' in dockerfile
