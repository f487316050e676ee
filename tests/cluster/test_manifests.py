"""The cluster configs: the cluster-launcher YAML against Ray's own schema, the
KubeRay manifests' required fields, token auth everywhere, and the MLflow stack."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def load(path: Path):
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------------ cluster launcher


@pytest.fixture(scope="module")
def launcher():
    return load(CLUSTER / "cluster.yaml")


def test_cluster_yaml_validates_against_rays_schema(launcher):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(copy.deepcopy(launcher))
    # as `ray up` sees it: merged with the provider's defaults
    prepared = prepare_config(copy.deepcopy(launcher))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("breakage", [
    lambda c: c["available_node_types"]["gpu_worker"].update(min_workers="two"),
    lambda c: c.update(idle_timeout_minutes=-1),
    lambda c: c.pop("provider"),
    lambda c: c["docker"].update(unknown_option=True),
])
def test_broken_cluster_yaml_fails_the_schema(launcher, breakage):
    from ray.autoscaler._private.util import validate_config

    broken = copy.deepcopy(launcher)
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_cluster_yaml_turns_token_auth_on_for_every_node(launcher):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in launcher[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    # the token file reaches every node
    assert "~/.ray/auth_token" in launcher["file_mounts"]
    head = next(c for c in launcher["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head
    assert launcher["available_node_types"]["head"]["resources"] == {"CPU": 0}
    workers = launcher["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    # the shared mount is made on the host and passed into the containers
    assert any("/mnt/shared" in c for c in launcher["initialization_commands"])
    assert any("/mnt/shared:/mnt/shared" in o for o in launcher["docker"]["run_options"])


# ------------------------------------------------------------------ KubeRay


def kuberay_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]


def check_pod_template(template: dict, where: str) -> None:
    containers = template["spec"]["containers"]
    assert containers, where
    for c in containers:
        assert c.get("name") and c.get("image"), where
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", c["name"]), where


def check_ray_cluster_spec(spec: dict, where: str) -> None:
    assert spec["authOptions"]["mode"] == "token", f"{where}: token auth"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), f"{where}: rayStartParams are strings"
    assert head["rayStartParams"]["num-cpus"] == "0"
    check_pod_template(head["template"], f"{where}.headGroupSpec")
    groups = spec["workerGroupSpecs"]
    assert groups, where
    for g in groups:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in g, f"{where}: worker group lacks {key}"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], where
        check_pod_template(g["template"], f"{where}.workerGroupSpecs[{g['groupName']}]")
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, f"{where}: GPU workers"
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    images |= {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, f"{where}: one project image, got {images}"


def test_raycluster_manifest():
    docs = kuberay_docs("raycluster.yaml")
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"]
    check_ray_cluster_spec(rc["spec"], "RayCluster")
    assert rc["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    # every pod mounts the ReadWriteMany claim defined alongside
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    templates = [rc["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in rc["spec"]["workerGroupSpecs"]]
    for t in templates:
        claims = {v["persistentVolumeClaim"]["claimName"] for v in t["spec"]["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {pvc["metadata"]["name"]}


def test_rayjob_manifest():
    (job,) = kuberay_docs("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m study.cli run study/presets/cifar10.yaml")
    assert (Path(__file__).resolve().parents[2] / "study" / "presets" / "cifar10.yaml").is_file()
    assert "--storage-path /mnt/shared/" in spec["entrypoint"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/home/ray/resstudy"
    check_ray_cluster_spec(spec["rayClusterSpec"], "RayJob.rayClusterSpec")


def test_dockerfile_matches_the_pinned_versions():
    text = (CLUSTER / "Dockerfile").read_text()
    pyproject = (CLUSTER.parent / "pyproject.toml").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311-gpu$", text, re.M)
    for pkg in ("torch", "torchvision", "ray"):
        pinned = re.search(rf'"{pkg}(?:\[[^\]]*\])?==([\d.]+)"', pyproject).group(1)
        assert pinned in text, f"{pkg} {pinned}"
    assert "WORKDIR /home/ray/resstudy" in text  # the RayJob's working_dir


# ------------------------------------------------------------------ MLflow stack


def test_mlflow_compose_is_local_by_default_and_keeps_secrets_out():
    compose = load(CLUSTER / "mlflow" / "docker-compose.yaml")
    services = compose["services"]
    assert set(services) >= {"postgres", "minio", "mlflow"}
    mlflow = services["mlflow"]
    cmd = mlflow["command"]
    assert "--allowed-hosts" in cmd and "--artifacts-destination s3://" in cmd
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["ports"] == ["${MLFLOW_BIND:-127.0.0.1}:5000:5000"]
    # no published database or S3 API; MinIO's console only on loopback
    assert "ports" not in services["postgres"]
    assert all(p.startswith("127.0.0.1:") for p in services["minio"].get("ports", []))
    # secrets are required from the env file, never defaulted in the compose file
    text = (CLUSTER / "mlflow" / "docker-compose.yaml").read_text()
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert re.search(rf"\$\{{{secret}:\?", text), secret
    example = (CLUSTER / "mlflow" / "mlflow.env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example and "MLFLOW_ALLOWED_HOSTS=" in example
