"""Every command example in README.md and docs/ runs, as written, in a project folder of its own.

The examples are read from the ```bash blocks and run in order, in this process (each command's own
`main`, so a torch import is paid once): placeholders (CKPT, CSV, DIR) name the folder's files,
training gets tiny settings appended (ResNet18, 32 px, one epoch, random init), `serve.py` starts the app
with FastAPI's TestClient and the `curl` lines that follow are sent to it. What cannot run here is
listed in SKIPPED with the reason. A new example that fails, or that this file does not know how to
run, fails the test: the docs cannot show a command that does not work."""

import importlib
import json
import re
import shlex
import shutil

import pytest

from helpers import ROOT, SHARED, environment, gradient_image, write_jpeg

pytestmark = pytest.mark.slow  # trains, evaluates, exports and serves, in-process

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TINY = ["--ARCH=resnet18", "--PRETRAINED=False", "--IMG_SIZE=32", "--BATCH_SIZE=16", "--NUM_EPOCHS=1"]
TINY += ["--NUM_WORKERS=0"]
PLACEHOLDERS = {"CKPT": "checkpoints/best.pth", "CSV": "data/metadata.csv", "DIR": "data/isic"}
SKIPPED = {  # first words of a command -> why it does not run here
    "python3 -m venv": "the install and the demo: .ci/run runs them on a fresh clone",
    "pip install": "installs packages",
    "isic image": "downloads the ISIC archive (no network here)",
    "docker": "no Docker here",
    "torchrun": "several processes: tests/test_train.py and test_archive_prediction.py run them on localhost",
    "uvicorn": "the same app as serve.py, under uvicorn's own command line",
    "python src/training/oof.py --demo": "the two-stage demo: .ci/run runs it",
    "python src/training/context.py --metadata data/demo": "the two-stage demo: .ci/run runs it",
    "python src/training/train.py --DATA_DIR=../shared": "docs/gate.md's recipe: minutes on real images",
    "python src/training/evaluate.py --checkpoint checkpoints/isic2017": "needs docs/gate.md's model",
    "python benchmarks/gate.py": "needs docs/gate.md's model",
}


def documented_commands() -> list[str]:
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split("  #")[0].strip()
                line = " ".join(PLACEHOLDERS.get(w, w) for w in line.split())  # CKPT is best.pth: once
                if line and not line.startswith("#") and line not in found:
                    found.append(line)
    return found


def project(root, demo_dir):
    """A user's folder: ISIC-layout images and labels, new images to predict, an ISIC 2024 test set."""
    shutil.copytree(demo_dir, root / "data" / "isic")
    shutil.copy(demo_dir / "metadata.csv", root / "data" / "metadata.csv")
    for folder in ("data/new", "new-images", "data/test"):
        (root / folder).mkdir(parents=True)
        for name in ("ISIC_9000001", "ISIC_9000002"):
            shutil.copy(demo_dir / f"{name}.jpg", root / folder / f"{name}.jpg")
    listed = (demo_dir / "metadata.csv").read_text().splitlines()
    rows = [listed[0]] + [r for r in listed[1:] if r.startswith(("ISIC_9000001,", "ISIC_9000002,"))]
    for name in ("new.csv", "new-metadata.csv", "test.csv"):
        (root / name).write_text("\n".join(rows) + "\n")
    for name in ("a", "b", "lesion", "back", "arm", "leg"):
        write_jpeg(root / f"{name}.jpg", gradient_image(120, 160))
    if (SHARED / "isic2024").is_dir():
        for name in ("test-metadata.csv", "test-image.hdf5"):
            shutil.copy(SHARED / "isic2024" / name, root / name)


def run(command: str, client_box: dict):
    """One documented command; returns what it exited with (0 for a served app)."""
    words = shlex.split(command.replace("[--tta]", ""))
    env = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = PLACEHOLDERS.get(value, value)
    if words[0] == "curl":
        return curl(words[1:], client_box["client"]) if client_box.get("client") else 0
    assert words[0] == "python" and words[1].endswith(".py"), f"cannot run this example: {command}"
    module = importlib.import_module(words[1][:-3].replace("/", "."))
    args = words[2:] + (TINY if words[1] in ("src/training/train.py", "src/training/oof.py") else [])
    with environment(env):  # this command's variables only, as in a shell
        return serve(module, env, client_box) if words[1] == "src/inference/serve.py" else module.main(args)


def serve(module, env: dict, client_box: dict) -> int:
    """`serve.py` as FastAPI's TestClient: its lifespan loads the models, as at a real start."""
    from fastapi.testclient import TestClient

    try:
        client_box["client"] = TestClient(module.app).__enter__()
    except module.StartupError as e:
        assert keeps_context_only(env.get("CONTEXT_MODEL")), e
        assert "trained without image scores" in str(e)  # documented in docs/context.md
        return 0  # the curl lines that follow have no service to ask
    assert client_box["client"].get("/health").status_code == 200
    return 0


def keeps_context_only(path) -> bool:
    """context.py kept context-only: the tiny image model here can score below the metadata alone,
    and then the service refuses the context stage, as docs/context.md says it does."""
    from src.core.context_model import ContextModel

    return bool(path) and not ContextModel.load(path).uses_image_score


def curl(words: list[str], client) -> int:
    files, data, url = [], {}, None
    while words:
        word = words.pop(0)
        if word == "-F":
            key, value = words.pop(0).split("=", 1)
            if value.startswith("@"):
                files.append((key, (value[1:], open(value[1:], "rb").read(), "image/jpeg")))
            else:
                data[key] = value
        elif word == "-o":
            words.pop(0)  # the answer is checked, not saved
        else:
            url = word
    path = "/" + url.split("/", 1)[1]
    r = client.post(path, files=files, data=data)
    assert r.status_code == 200, (path, r.text)
    if path in ("/predict", "/triage"):
        body = r.json()
        for answer in body.get("lesions", [body]):
            assert answer["decision"] in ("above threshold", "below threshold", "refer")
    return 0


def test_every_documented_command_runs(demo_dir, tmp_path, monkeypatch, capsys):
    project(tmp_path, demo_dir)
    monkeypatch.chdir(tmp_path)
    client_box, ran, skipped = {}, [], []
    for command in documented_commands():
        bare = re.sub(r"^([A-Z_]+=\S+\s+)+", "", command)  # without its environment variables
        reason = next((why for start, why in SKIPPED.items() if bare.startswith(start)), None)
        if "test-image.hdf5" in command and not (tmp_path / "test-image.hdf5").is_file():
            reason = "needs the real ISIC 2024 sample (../shared/isic-real/)"
        if reason:
            skipped.append((command, reason))
            continue
        if not command.startswith("curl") and client_box.get("client"):
            client_box.pop("client").__exit__(None, None, None)
        code = run(command, client_box)
        assert code == 0, f"{command} exited {code}: {capsys.readouterr().err[-2000:]}"
        ran.append(command)
    if client_box.get("client"):
        client_box.pop("client").__exit__(None, None, None)
    print(json.dumps({"ran": len(ran), "skipped": skipped}, indent=1))
    assert len(ran) >= 20 and (tmp_path / "checkpoints" / "best.pth").is_file()
