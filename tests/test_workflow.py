"""The GitHub Actions workflow: valid against the workflow schema, and it runs exactly the README's commands."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_workflow_matches_the_github_workflow_schema():
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("check-jsonschema is not installed (it is in requirements.txt)")
    done = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_runs_the_readme_commands_and_nothing_else():
    # The README's first two commands are the book and the test command; .ci/run says which is the test one.
    test_cmd = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1].strip()
    first_two = _readme_commands()[:2]
    assert test_cmd in first_two, (test_cmd, first_two)
    (book_cmd,) = [c for c in first_two if c != test_cmd]
    jobs = _workflow()["jobs"]
    runs = {name: [s["run"] for s in job["steps"] if "run" in s] for name, job in jobs.items()}
    assert runs["test"] == [test_cmd]
    assert runs["book"] == [book_cmd]


def test_workflow_triggers_and_publishes_only_main():
    wf = _workflow()
    triggers = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    book, deploy = wf["jobs"]["book"], wf["jobs"]["deploy"]
    assert book["needs"] == "test" and "refs/heads/main" in book["if"] and "push" in book["if"]
    assert any(s.get("with", {}).get("path") == "_build/html" for s in book["steps"])
    assert deploy["needs"] == "book" and deploy["permissions"] == {"pages": "write", "id-token": "write"}


def test_actions_are_pinned_to_commits_and_dependencies_cached():
    wf = _workflow()
    uses = [s["uses"] for job in wf["jobs"].values() for s in job["steps"] if "uses" in s]
    assert uses, "the workflow uses no action"
    for u in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u), f"{u} is not pinned to a full commit SHA"
    for name in ("test", "book"):
        cache = [s for s in wf["jobs"][name]["steps"] if s.get("uses", "").startswith("actions/cache@")]
        assert cache, f"job {name} caches nothing"
        paths = cache[0]["with"]["path"]
        assert ".venv" in paths and "~/.cache/pip" in paths
        assert "hashFiles('requirements.txt', 'pyproject.toml')" in cache[0]["with"]["key"]


def test_workflow_python_is_the_readme_floor():
    readme = (ROOT / "README.md").read_text()
    floor = re.search(r"Python (3\.\d+)\+", readme).group(1)
    versions = {s["with"]["python-version"] for job in _workflow()["jobs"].values() for s in job["steps"]
                if s.get("uses", "").startswith("actions/setup-python@")}
    assert versions == {floor}, (versions, floor)
    assert json.dumps(_workflow()).count("python3.11") >= 1
