"""The deployment shape: cluster/ (Ray cluster launcher, KubeRay) and jobs/ (Ray job
entrypoints and runtime environments).

No Ray cluster is started here. The checks use Ray's own validators and packager:
the autoscaler schema and ``validate_config`` for ``cluster/aws.yaml``, ``RuntimeEnv`` for
the runtime environments, Ray's working-dir zipper for what a job uploads. The job scripts
run for real with ``PYTHON`` pointed at a recorder, and the recorded command line goes
through the CLI's own argument parser.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
JOBS = ROOT / "jobs"
KUBERAY = CLUSTER / "kuberay"

# The CLI contract (mmrecun_ray/cli.py): every sub-command a deployment file may name.
SUBCOMMANDS = {"prepare", "train", "evaluate", "unlearn", "compare", "tune", "demo"}
JOB_SCRIPTS = ["train.sh", "unlearn.sh", "compare.sh", "tune.sh"]
RUNTIME_ENVS = ["runtime_env.yaml", "runtime_env_s3.yaml"]
SECRET_NAME = re.compile(r"SECRET|PASSWORD|SESSION_TOKEN|AUTH_TOKEN|ACCESS_KEY", re.IGNORECASE)
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
JOB_REF = re.compile(r"(?:^|[\s/])jobs/([\w-]+\.sh)\b")

# Settings that make every script reach its CLI call (values are plain strings).
FULL_ENV = {
    "DATA_URI": "s3://bucket/datasets/lfm2k",
    "OUT_URI": "s3://bucket/runs/out",
    "MODEL_URI": "s3://bucket/runs/lfm2k-freedom/model",
    "REQUEST": "users:5%",
}


# --- helpers ------------------------------------------------------------------------------

def load_yaml(path: Path) -> Any:
    """One YAML document from ``path``."""
    with path.open() as f:
        return yaml.safe_load(f)


def kuberay_docs() -> list[tuple[Path, dict[str, Any]]]:
    """Every document of every ``cluster/kuberay/*.yaml`` as ``(file, doc)``."""
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        with path.open() as f:
            out.extend((path, d) for d in yaml.safe_load_all(f) if d is not None)
    return out


def docs_of_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in kuberay_docs() if d.get("kind") == kind]


def pod_specs(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(group name, pod spec)`` for the head and each worker group of a RayCluster."""
    yield "head", cluster["spec"]["headGroupSpec"]["template"]["spec"]
    for g in cluster["spec"]["workerGroupSpecs"]:
        yield g["groupName"], g["template"]["spec"]


def run_script(script: Path, env: dict[str, str], args: list[str], tmp_path: Path
               ) -> tuple[subprocess.CompletedProcess, list[str] | None]:
    """Run a jobs/ script with ``PYTHON`` replaced by a recorder.

    Returns the process and the argv the script handed to "python" (``None`` if it never
    got that far).
    """
    recorder = tmp_path / "record-python"
    argv_file = tmp_path / "argv.bin"
    recorder.write_text('#!/usr/bin/env bash\nprintf \'%s\\0\' "$@" > "$ARGV_OUT"\n')
    recorder.chmod(0o755)
    argv_file.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items()
            if k not in FULL_ENV and k not in {"MODEL", "METHOD", "METHODS", "SAMPLES", "EPOCHS",
                                              "ALPHA", "WORKERS", "GPUS"}}
    proc = subprocess.run(["bash", str(script), *args], env={**base, **env, "PYTHON": str(recorder),
                                                             "ARGV_OUT": str(argv_file)},
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    if not argv_file.exists():
        return proc, None
    return proc, argv_file.read_bytes().decode().split("\0")[:-1]


def cli_parser():
    """The CLI's real argument parser (imports the package, not Ray)."""
    from mmrecun_ray.cli import build_parser
    return build_parser()


def registered_subcommands(parser) -> set[str]:
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def find_secret_values(obj: Any, path: str = "") -> list[str]:
    """Paths of mapping entries whose key names a secret and whose value is a literal.

    Handles Ray ``env_vars`` maps (``NAME: value``, upper-case names only, so a file
    mount such as ``~/.ray/auth_token: PATH`` is not taken for a value) and Kubernetes env lists
    (``{name: NAME, value: ...}``); a Kubernetes ``valueFrom`` reference is not a literal.
    """
    found: list[str] = []
    if isinstance(obj, dict):
        if isinstance(obj.get("name"), str) and SECRET_NAME.search(obj["name"]) and "value" in obj:
            found.append(f"{path}/{obj['name']}")
        for k, v in obj.items():
            if (isinstance(k, str) and ENV_NAME.fullmatch(k) and SECRET_NAME.search(k)
                    and isinstance(v, (str, int, float))):
                found.append(f"{path}/{k}")
            found.extend(find_secret_values(v, f"{path}/{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found.extend(find_secret_values(v, f"{path}[{i}]"))
    return found


AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
SECRET_ASSIGN = re.compile(r"aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}", re.IGNORECASE)


def secret_text_hits(text: str) -> list[str]:
    """AWS access key ids and 40-character secret keys written out in ``text``."""
    return AWS_KEY_ID.findall(text) + SECRET_ASSIGN.findall(text)


# --- cluster/aws.yaml ---------------------------------------------------------------------

def ray_schema() -> dict[str, Any]:
    import ray.autoscaler
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def validate_like_ray_up(config: dict[str, Any]) -> dict[str, Any]:
    """What ``ray up`` does before touching AWS: schema-check the file, fill in the
    provider defaults, then ``validate_config`` (schema again + cross-field rules)."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config
    jsonschema.validate(config, ray_schema())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def aws() -> dict[str, Any]:
    return load_yaml(CLUSTER / "aws.yaml")


def test_aws_config_passes_ray_autoscaler_validation(aws):
    prepared = validate_like_ray_up(aws)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # prepare_config merged the shared setup commands into the head's and workers'.
    assert prepared["head_setup_commands"][: len(aws["setup_commands"])] == aws["setup_commands"]


def _fractional_gpu(c):
    c["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5


def _unknown_field(c):
    c["worker_nodez"] = {"InstanceType": "g5.xlarge"}


def _min_over_max(c):
    c["available_node_types"]["gpu_worker"]["min_workers"] = c["max_workers"] + 1


def _missing_head_type(c):
    c["head_node_type"] = "no_such_type"


def _node_type_without_resources(c):
    del c["available_node_types"]["cpu_worker"]["resources"]


@pytest.mark.parametrize("breakage, error", [
    (_fractional_gpu, "jsonschema"),
    (_unknown_field, "jsonschema"),
    (_node_type_without_resources, "jsonschema"),
    (_min_over_max, ValueError),
    (_missing_head_type, ValueError),
])
def test_broken_aws_config_fails_validation(aws, breakage, error):
    import jsonschema
    broken = copy.deepcopy(aws)
    breakage(broken)
    expected = jsonschema.ValidationError if error == "jsonschema" else error
    with pytest.raises(expected):
        validate_like_ray_up(broken)


def test_aws_config_shape(aws):
    import ray
    types = aws["available_node_types"]
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no node type offers a GPU"
    for name, t in gpu_types.items():
        itype = t["node_config"]["InstanceType"]
        assert re.match(r"^(g4dn|g5|g6|g6e|p3|p4d|p5)\.", itype), f"{name}: {itype} has no NVIDIA GPU"
        assert t["max_workers"] >= 1
        assert t["docker"]["worker_image"].endswith("-gpu")
    assert "GPU" not in types[aws["head_node_type"]]["resources"]
    # Workers read and write s3:// through an instance profile, never through keys.
    for name, t in types.items():
        if name != aws["head_node_type"]:
            assert "IamInstanceProfile" in t["node_config"], f"{name}: no IAM instance profile"
    # Images match the Ray the project pins, on the project's Python.
    images = [aws["docker"]["image"]] + [t["docker"]["worker_image"] for t in gpu_types.values()]
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray.__version__}-py311"), image
    # Set-up installs the repo's requirements.txt (mounted from the checkout), which pins torch.
    assert aws["file_mounts"].get("~/mmrecun") == "."
    assert any("pip install" in c and "~/mmrecun/requirements.txt" in c for c in aws["setup_commands"])
    pins = (ROOT / "requirements.txt").read_text().splitlines()
    assert any(re.match(r"^torch==\d", p) for p in pins), "requirements.txt does not pin torch"
    # Token authentication on every node.
    for cmd in aws["head_start_ray_commands"] + aws["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd


# --- KubeRay --------------------------------------------------------------------------------

def test_kuberay_manifests_parse_with_expected_kinds():
    docs = kuberay_docs()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == ["RayCluster", "RayCronJob", "RayJob", "RayJob"], kinds
    for path, d in docs:
        assert d["apiVersion"] == "ray.io/v1", path.name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), path.name


def test_raycluster_groups_resources_and_credentials():
    import ray
    [(path, rc)] = docs_of_kind("RayCluster")
    spec = rc["spec"]
    assert spec["rayVersion"] == ray.__version__
    # KubeRay's rayStartParams is map[string]string: a bare YAML number would be rejected.
    for params in [spec["headGroupSpec"]["rayStartParams"]] + [g["rayStartParams"] for g in spec["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in params.values()), params
    gpu_groups = []
    for group, pod in pod_specs(rc):
        ray_containers = [c for c in pod["containers"] if c["image"].startswith("rayproject/ray:")]
        assert len(ray_containers) == 1, group
        c = ray_containers[0]
        assert c["image"].startswith(f"rayproject/ray:{ray.__version__}-py311"), (group, c["image"])
        gpus = int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        if gpus:
            gpu_groups.append(group)
            assert c["image"].endswith("-gpu"), (group, c["image"])
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), group
        env = {e["name"]: e for e in c["env"]}
        assert "/code" in env["PYTHONPATH"]["value"].split(":"), group
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "mmrecun-s3" and ref["key"] == name, (group, name)
            assert "value" not in env[name], (group, name)
        # The code the entrypoints run is what fetch-code put into the shared volume.
        init = {i["name"]: i for i in pod["initContainers"]}
        assert "$(CODE_URI)" in init["fetch-code"]["command"]
        assert "requirements.txt" in " ".join(init["install-deps"]["args"])
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts.get("/code") == "code", group
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    head = dict(pod_specs(rc))["head"]
    assert "nvidia.com/gpu" not in json.dumps(head), "the head should not hold a GPU"


def rayjob_params():
    return [pytest.param(p, d, id=p.name) for p, d in docs_of_kind("RayJob")]


@pytest.mark.parametrize("path, job", rayjob_params())
def test_rayjob_runs_a_job_script_on_the_raycluster(path, job, tmp_path):
    from ray.runtime_env import RuntimeEnv
    [(_, rc)] = docs_of_kind("RayCluster")
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    entrypoint = spec["entrypoint"]
    refs = JOB_REF.findall(entrypoint)
    assert len(refs) == 1, entrypoint
    script = JOBS / refs[0]
    assert script.is_file(), f"{path.name}: {entrypoint!r} names a script missing from jobs/"
    # The path in the pod is the code volume's copy of the repository.
    m = re.search(r"(\S*)/jobs/", entrypoint)
    assert m and m.group(1) == "/code", entrypoint
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)  # Ray's own validation
    env_vars = runtime_env["env_vars"]
    assert not find_secret_values(runtime_env), path.name
    for uri in ("DATA_URI", "MODEL_URI", "OUT_URI"):
        assert env_vars[uri].startswith("s3://"), (path.name, uri)
    # Those settings are enough for the script: it reaches the CLI with a contract command.
    proc, argv = run_script(script, env_vars, [], tmp_path)
    assert proc.returncode == 0 and argv is not None, proc.stderr
    assert argv[:2] == ["-m", "mmrecun_ray"] and argv[2] in SUBCOMMANDS, argv
    parser = cli_parser()
    if argv[2] not in registered_subcommands(parser):
        pytest.skip(f"`{argv[2]}` is not registered in mmrecun_ray.cli yet")
    args = parser.parse_args(argv[2:])
    assert args.out == env_vars["OUT_URI"]


# --- jobs/*.sh ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", JOB_SCRIPTS)
def test_job_script_syntax_and_mode(name):
    script = JOBS / name
    subprocess.run(["bash", "-n", str(script)], check=True, capture_output=True, timeout=10)
    assert os.access(script, os.X_OK), f"{name} is not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(JOBS / "_common.sh")], check=True, capture_output=True, timeout=10)


@pytest.mark.parametrize("name", JOB_SCRIPTS)
def test_job_script_builds_cli_call_the_parser_accepts(name, tmp_path):
    env = {**FULL_ENV, "WORKERS": "3", "GPUS": "1"}
    proc, argv = run_script(JOBS / name, env, ["--set", "seed=7"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert argv[:2] == ["-m", "mmrecun_ray"]
    sub = argv[2]
    assert sub == name.removesuffix(".sh") and sub in SUBCOMMANDS
    # Environment became flags; the script's own arguments come last, untouched.
    assert argv[-2:] == ["--set", "seed=7"]
    flags = argv[3:]
    assert flags[flags.index("--out") + 1] == FULL_ENV["OUT_URI"]
    assert flags[flags.index("--data") + 1] == FULL_ENV["DATA_URI"]
    assert flags[flags.index("--workers") + 1] == "3" and "--gpus" in flags
    if sub != "train":
        assert flags[flags.index("--model-uri") + 1] == FULL_ENV["MODEL_URI"]
        assert flags[flags.index("--request") + 1] == "users:5%"
    # The log line names the command but no credential.
    assert "+ " in proc.stderr and sub in proc.stderr
    parser = cli_parser()
    if sub not in registered_subcommands(parser):
        pytest.skip(f"`{sub}` is not registered in mmrecun_ray.cli yet")
    args = parser.parse_args(argv[2:])
    assert args.out == FULL_ENV["OUT_URI"] and args.workers == 3 and args.gpus is True


def test_job_scripts_defaults_and_optional_settings(tmp_path):
    _, argv = run_script(JOBS / "train.sh", FULL_ENV, [], tmp_path)
    assert argv[argv.index("--model") + 1] == "freedom"
    assert "--workers" not in argv and "--gpus" not in argv and "--epochs" not in argv
    _, argv = run_script(JOBS / "train.sh", {**FULL_ENV, "EPOCHS": "50", "MODEL": "vbpr", "GPUS": "false"},
                         [], tmp_path)
    assert argv[argv.index("--epochs") + 1] == "50" and argv[argv.index("--model") + 1] == "vbpr"
    assert "--gpus" not in argv
    _, argv = run_script(JOBS / "unlearn.sh", {**FULL_ENV, "ALPHA": "0.25", "METHOD": "gold"}, [], tmp_path)
    assert argv[argv.index("--method") + 1] == "gold"
    assert argv[argv.index("--set") + 1] == "alpha=0.25"
    _, argv = run_script(JOBS / "unlearn.sh", FULL_ENV, [], tmp_path)
    assert "--method" not in argv  # the CLI's default (hir) decides
    _, argv = run_script(JOBS / "compare.sh", FULL_ENV, [], tmp_path)
    assert "--methods" not in argv
    _, argv = run_script(JOBS / "compare.sh", {**FULL_ENV, "METHODS": "hir,gold"}, [], tmp_path)
    assert argv[argv.index("--methods") + 1] == "hir,gold"
    _, argv = run_script(JOBS / "tune.sh", {**FULL_ENV, "SAMPLES": "16"}, [], tmp_path)
    assert argv[argv.index("--samples") + 1] == "16"


@pytest.mark.parametrize("name, missing", [
    ("train.sh", "DATA_URI"), ("train.sh", "OUT_URI"),
    ("unlearn.sh", "MODEL_URI"), ("unlearn.sh", "REQUEST"),
    ("compare.sh", "REQUEST"), ("tune.sh", "MODEL_URI"),
])
def test_job_script_refuses_missing_setting(name, missing, tmp_path):
    env = {k: v for k, v in FULL_ENV.items() if k != missing}
    proc, argv = run_script(JOBS / name, env, [], tmp_path)
    assert proc.returncode == 2 and argv is None
    assert missing in proc.stderr


# --- runtime environments ----------------------------------------------------------------

@pytest.mark.parametrize("name", RUNTIME_ENVS)
def test_runtime_env_is_valid_for_ray_job_submit(name):
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv
    path = JOBS / name
    # Exactly what `ray job submit --runtime-env FILE --working-dir .` builds.
    runtime_env = parse_runtime_env_args(runtime_env=str(path), working_dir=".")
    validated = RuntimeEnv(**runtime_env)
    assert validated["working_dir"] == "."
    assert "pip" not in runtime_env and "conda" not in runtime_env
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())
    assert not find_secret_values(runtime_env), name


def test_runtime_envs_share_excludes_and_s3_adds_region_only():
    plain, s3 = (load_yaml(JOBS / n) for n in RUNTIME_ENVS)
    assert plain["excludes"] == s3["excludes"]
    extra = set(s3["env_vars"]) - set(plain["env_vars"])
    assert extra and all(k.startswith("AWS_") for k in extra), extra
    assert all(not SECRET_NAME.search(k) for k in extra)


def test_working_dir_excludes_ship_code_but_not_data(tmp_path):
    """Ray's own zipper over a planted tree: the excludes keep the package (including
    mmrecun_ray/data/, which an unanchored `data/` pattern would drop) and drop data,
    runs and VCS files."""
    from ray._private.runtime_env.packaging import _zip_files
    excludes = load_yaml(JOBS / "runtime_env.yaml")["excludes"]
    planted = {
        "mmrecun_ray/__init__.py": True, "mmrecun_ray/data/schema.py": True,
        "jobs/unlearn.sh": True, "requirements.txt": True, "tests/test_cluster.py": True,
        ".git/HEAD": False, "runs/lfm2k/metrics.json": False, "data/lfm2k/lfm2k.inter": False,
        "shared/data/lfm2k/text_feat.npy": False, "feats/audio_feat.npy": False,
        "out/model/model.pt": False, "mmrecun_ray/__pycache__/cli.cpython-311.pyc": False,
        "exports/interactions.parquet": False,
    }
    src = tmp_path / "repo"
    for rel in planted:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    zpath = tmp_path / "pkg.zip"
    _zip_files(str(src), excludes, str(zpath), include_gitignore=False)
    shipped = {n for n in zipfile.ZipFile(zpath).namelist() if not n.endswith("/")}
    assert shipped == {rel for rel, keep in planted.items() if keep}


def test_this_checkout_uploads_small_and_complete(tmp_path):
    from ray._private.runtime_env.packaging import _zip_files
    excludes = load_yaml(JOBS / "runtime_env.yaml")["excludes"]
    zpath = tmp_path / "pkg.zip"
    _zip_files(str(ROOT), excludes, str(zpath), include_gitignore=True)
    names = set(zipfile.ZipFile(zpath).namelist())
    for needed in ["mmrecun_ray/__init__.py", "mmrecun_ray/cli.py", "mmrecun_ray/data/schema.py",
                   "jobs/_common.sh", *[f"jobs/{s}" for s in JOB_SCRIPTS], "requirements.txt"]:
        assert needed in names, needed
    assert not any(n.startswith((".git/", "runs/")) or n.endswith(".npy") for n in names)
    assert zpath.stat().st_size < 20 * 2**20, f"working_dir upload is {zpath.stat().st_size} bytes"


# --- no secrets anywhere, and the docs name real files -------------------------------------

def deployment_files() -> list[Path]:
    return sorted(p for d in (CLUSTER, JOBS) for p in d.rglob("*") if p.is_file())


def test_secret_scanners_detect_planted_secrets():
    planted = {"env_vars": {"AWS_REGION": "us-east-1", "AWS_SECRET_ACCESS_KEY": "abc"},
               "env": [{"name": "AWS_SESSION_TOKEN", "value": "t"},
                       {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    assert find_secret_values(planted) == ["/env_vars/AWS_SECRET_ACCESS_KEY", "/env[0]/AWS_SESSION_TOKEN"]
    text = "AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP\naws_secret_access_key: " + "a" * 40
    assert len(secret_text_hits(text)) == 2
    assert secret_text_hits("key: AWS_SECRET_ACCESS_KEY\nvalueFrom: {}") == []


def test_deployment_files_hold_no_secret_values():
    for path in deployment_files():
        text = path.read_text()
        assert not secret_text_hits(text), path
        if path.suffix == ".yaml":
            with path.open() as f:
                for doc in yaml.safe_load_all(f):
                    assert not find_secret_values(doc), path


def test_readmes_reference_existing_files_and_commands():
    for readme in (JOBS / "README.md", CLUSTER / "README.md"):
        text = readme.read_text()
        for script in JOB_REF.findall(text):
            assert (JOBS / script).is_file(), f"{readme}: jobs/{script}"
        for rel in re.findall(r"(?:jobs|cluster)/[\w/.-]+\.yaml", text):
            assert (ROOT / rel).is_file(), f"{readme}: {rel}"
        for sub in re.findall(r"python -m mmrecun_ray (\w+)", text):
            assert sub in SUBCOMMANDS, f"{readme}: {sub}"
    jobs_readme = (JOBS / "README.md").read_text()
    for script in JOB_SCRIPTS:
        assert f"bash jobs/{script}" in jobs_readme, script
