"""The installed `jaxheads` command: subcommands, help texts, one flag mechanism, config files, error lines, and a
run from a folder outside the repository."""

import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

from jaxheads.launch.cli import COMMANDS

REPO = pathlib.Path(__file__).resolve().parents[1]
JAXHEADS = shutil.which("jaxheads", path=os.path.dirname(sys.executable)) or shutil.which("jaxheads")


def jaxheads(*args, cwd, devices=1):
    assert JAXHEADS, "the jaxheads command is not installed: pip install -e ."
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}
    return subprocess.run([JAXHEADS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_command_lists_its_subcommands(tmp_path):
    result = jaxheads("--help", cwd=tmp_path)
    assert result.returncode == 0 and all(f"  {name} " in result.stdout for name in COMMANDS)
    unknown = jaxheads("shipz", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown command 'shipz'" in unknown.stderr


HELP_OF_EVERY_COMMAND = """
import contextlib, io, json, sys
from jaxheads.launch.cli import COMMANDS, main
found = {}
for command in COMMANDS:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["jaxheads", command, "--help"])
        except SystemExit as exit:
            found[command] = [exit.code, out.getvalue()]
print(json.dumps(found))
"""


def test_help_lists_every_setting_with_its_default_and_exits_0(tmp_path):
    console = jaxheads("ships", "--help", cwd=tmp_path)
    assert console.returncode == 0 and "\n  --model=''\n" in console.stdout
    found = json.loads(subprocess.run([sys.executable, "-c", HELP_OF_EVERY_COMMAND], cwd=tmp_path, capture_output=True,
                                      text=True, timeout=300, check=True).stdout)
    assert set(found) == set(COMMANDS)
    for command, (code, text) in found.items():
        config = importlib.import_module(f"jaxheads.configs.{command}")
        assert code == 0, command
        for name, value in config.get_config().items():
            shown = f"'{value}'" if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else value
            assert f"\n  --{name}={shown}\n" in text, (command, name)
        assert "--config=FILE" in text and "--debug" in text


def test_every_config_field_has_one_help_line():
    for command in COMMANDS:
        config = importlib.import_module(f"jaxheads.configs.{command}")
        assert list(config.HELP) and set(config.HELP) == set(config.get_config()), command
        assert all(line and "\n" not in line for line in config.HELP.values())


def test_python_dash_m_runs_a_launch(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "jaxheads.launch", "sahara", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--steps=3" in result.stdout


def test_ships_from_another_folder_with_a_config_file(tiny_model_with_tokenizer, tmp_path):
    """Flags given on the command line win over the config file, which wins over the defaults."""
    config_file = tmp_path / "my_ships.py"
    config_file.write_text(
        "from jaxheads.configs import ships\n\n"
        "def get_config():\n"
        "    config = ships.get_config()\n"
        "    config.limit = 3\n"
        "    config.batch_size = 3\n"
        "    return config\n")
    result = jaxheads("ships", f"--config={config_file}", "--limit=2", f"--model={tiny_model_with_tokenizer}",
                      "--out=result", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "result" / "ships.json").read_text())
    assert written["num_prompts"] == 2 and written["settings"]["batch_size"] == 3
    assert written["provenance"]["argv"][1:4] == ["ships", f"--config={config_file}", "--limit=2"]
    assert (tmp_path / "result" / "ships_heatmap.png").exists()


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    result = jaxheads("ships", "--chunk_size=-5", "--out=out", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "jaxheads ships: error: --chunk_size must be an integer >= 0, got -5"
    debug = jaxheads("ships", "--chunk_size=-5", "--out=out", "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    config_file = tmp_path / "bad.py"
    config_file.write_text("import ml_collections\n\ndef get_config():\n"
                           "    return ml_collections.ConfigDict({'chunk': 4})\n")
    unknown = jaxheads("ships", f"--config={config_file}", cwd=tmp_path)
    assert unknown.returncode == 2 and "has fields this command does not know: chunk" in unknown.stderr


def test_every_package_folder_is_installed():
    """pyproject lists the packages by hand (launch/ and configs/ are mapped into jaxheads), so a new subpackage
    must be listed there too."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {folder: package for package, folder in setuptools["package-dir"].items()}
    found = set()
    for top in ("jaxheads", "launch", "configs"):
        for init in (REPO / top).glob("**/__init__.py"):
            rest = init.parent.relative_to(REPO / top).as_posix().replace("/", ".").strip(".")
            found.add(".".join(filter(None, [mapped.get(top, top), rest])))
    assert found == set(setuptools["packages"])


# Every flag and its default as `jaxheads COMMAND --help` printed them at commit 46e6e15, before the commands were
# gathered into one table (launch/cli.py) and the configs into shared fields (configs/common.py).
FLAGS_BEFORE = json.loads((REPO / "tests" / "data" / "flags_46e6e15.json").read_text())
# command -> {flag: shown default} of the flags added since: the sharding rules (docs/scaling.md) on every command
# that runs on a mesh, the mesh on the two that had none, and the model-judge settings (docs/judges.md) on every
# command that reports an ASR.
FLAGS_ADDED = {**{command: {"sharding": "'tp'"} for command in (
                   "ships", "sahara", "evaluate", "sahara_asr", "utility")},
               **{command: {"sharding": "'tp'", "remat": "true"} for command in (
                   "align", "finetune", "guard_train", "judge_train")},
               "patterns": {"mesh": "''", "sharding": "'tp'"}, "sink": {"mesh": "''", "sharding": "'tp'"},
               **{command: {"judge_template": "''", "policy": "''", "judge_base": "''", "judge_mesh": "''",
                            "asr_protocol": "'default'", **({"sharding": "'tp'"} if command in (
                                "evaluate", "sahara_asr", "utility") else {"sharding": "'tp'", "remat": "true"}
                                if command in ("align", "finetune") else {})}
                  for command in ("evaluate", "sahara_asr", "utility", "align", "finetune", "judge_eval")},
               "plan": {"sharding": "''", "topology": "''", "slices": "1",
                        "programs": "'ships,sahara,generate,train,train_lora'", "new_tokens": "64", "train_batch": "8",
                        "lora_rank": "16"}}
# --verify_weights (a full hash of the weights in the fingerprint) on every command that loads a model
for _command in ("ships", "sahara", "evaluate", "sahara_asr", "utility", "align", "finetune", "guard_train",
                 "judge_train", "patterns", "sink"):
    FLAGS_ADDED[_command] = {**FLAGS_ADDED.get(_command, {}), "verify_weights": "false"}


def shown_flags(text: str) -> dict[str, str]:
    import re

    return dict(re.findall(r"^  --([a-z_]+)=(.*)$", text, flags=re.M))


def test_every_command_lists_the_flags_and_defaults_it_had(tmp_path):
    found = json.loads(subprocess.run([sys.executable, "-c", HELP_OF_EVERY_COMMAND], cwd=tmp_path, capture_output=True,
                                      text=True, timeout=300, check=True).stdout)
    assert set(found) == set(FLAGS_BEFORE)
    for command, (_, text) in found.items():
        assert shown_flags(text) == {**FLAGS_BEFORE[command], **FLAGS_ADDED.get(command, {})}, command


def test_the_training_commands_defaults_are_the_trainers_own():
    """The trainer fields of align, finetune, guard train and judge train are TrainConfig's defaults, except where
    a command's config names another value."""
    import dataclasses

    from jaxheads.configs import common
    from jaxheads.train import TrainConfig

    library = {field.name: common.flag_value(field.default) for field in dataclasses.fields(TrainConfig)
               if field.name not in common.NOT_FLAGS}
    changed = {"align": {"epochs", "learning_rate", "warmup_steps", "max_length"},
               "finetune": {"learning_rate", "surgery_lambda", "sink_every"},
               "guard_train": {"epochs", "learning_rate", "warmup_steps", "lora_rank", "lora_targets"},
               "judge_train": {"epochs", "max_length", "learning_rate", "warmup_steps", "lora_rank", "lora_targets"}}
    for command, names in changed.items():
        config = importlib.import_module(f"jaxheads.configs.{command}").get_config()
        same = {name: config[name] for name in library if name not in names}
        assert same == {name: library[name] for name in same}, command
        assert all(config[name] != library[name] for name in names), command


def test_nan_and_inf_settings_and_a_broken_config_file_are_one_line_errors(tmp_path):
    """These were reported as "cannot write fingerprint.json as JSON", an OverflowError traceback and a SyntaxError
    traceback."""
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    cases = {("align", "--epochs=inf"): "jaxheads align: error: --epochs must be a finite number, got inf",
             ("ships", "--ablation=mean", "--epsilon=nan"): "jaxheads ships: error: --epsilon must be a finite number, "
                                                            "got nan",
             ("ships", "--config=broken.py"): "jaxheads ships: error: --config broken.py: syntax error at line 1: "
                                              "invalid syntax"}
    for args, line in cases.items():
        result = jaxheads(*args, "--out=out", cwd=tmp_path)
        assert (result.returncode, result.stderr.strip()) == (2, line)
