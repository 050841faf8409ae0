"""gan_core stays pure PyTorch: no orchestration, tracking or storage packages (ARCHITECTURE.md section 1)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("ray", "prefect", "mlflow", "boto3", "botocore", "pyarrow", "moto")
GAN_CORE = Path(__file__).resolve().parents[2] / "gan_core"


def _last_json_line(code: str):
    """Run `code` in a fresh interpreter; the JSON it printed last."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_importing_gan_core_loads_no_forbidden_package():
    code = (
        "import sys, json, importlib, pkgutil, gan_core\n"
        "for m in pkgutil.walk_packages(gan_core.__path__, 'gan_core.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = _last_json_line(code)
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert not bad, f"gan_core pulled in {bad}"


def test_no_forbidden_import_statement_in_gan_core():
    offenders = []
    files = sorted(GAN_CORE.rglob("*.py"))
    assert files, "gan_core not found"
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


def test_ray_worker_hook_is_light_and_quiets_the_cleaner():
    """infra.base.ray_hooks runs first in every Ray worker process: it must not import torch or gan_core, and it
    silences Ray Train's PlacementGroupCleaner warnings (the state API is off with the dashboard)."""
    code = (
        "import sys, json, logging, infra.base.ray_hooks as h\n"
        "h.quiet_worker_logs()\n"
        "levels = [logging.getLogger(n).level for n in h.QUIET_WORKER_LOGGERS]\n"
        "print(json.dumps({'heavy': [m for m in ('torch', 'gan_core', 'numpy') if m in sys.modules],\n"
        "                  'levels': levels, 'hook': h.SETUP_HOOK}))\n"
    )
    result = _last_json_line(code)
    assert result["heavy"] == []
    assert result["levels"] and all(level >= 40 for level in result["levels"])  # ERROR and above only
    module, func = result["hook"].rsplit(".", 1)
    assert module == "infra.base.ray_hooks" and func == "quiet_worker_logs"
