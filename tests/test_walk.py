"""The walk of a prompt from `jaxheads ships` to ships.json, traced call by call: along every chain of calls the
jaxheads modules entered form runs, and no module is entered again after the chain has gone on to another one
(launch -> configs -> jobs -> library, and inside the library each step hands on without calling back)."""

import json
import subprocess
import sys

TRACE = r"""
import json, sys
import jaxheads.launch.cli as cli

stack, walk, crossings = [], [], {}
importing = [0]  # module bodies running on the stack: an import, not the walk


def profile(frame, event, arg):
    if event == "call":
        module = frame.f_globals.get("__name__", "")
        stack.append((module if module.startswith("jaxheads") else None, frame.f_code.co_name == "<module>"))
        importing[0] += stack[-1][1]
        if importing[0]:
            return
        chain = [m for m, _ in stack if m]
        runs = [m for i, m in enumerate(chain) if i == 0 or chain[i - 1] != m]
        if stack[-1][0] and stack[-1][0] not in walk:
            walk.append(stack[-1][0])
        if len(runs) != len(set(runs)):
            crossings.setdefault(" -> ".join(runs), f"{frame.f_code.co_filename}:{frame.f_code.co_name}")
    elif event == "return" and stack:
        importing[0] -= stack.pop()[1]


sys.setprofile(profile)
try:
    cli.main(["jaxheads", "ships", *sys.argv[1:]])
except SystemExit as exit:
    code = exit.code
sys.setprofile(None)
print("WALK " + json.dumps({"walk": walk, "crossings": crossings, "code": code}))
"""


def test_a_ships_run_crosses_each_module_at_most_once(tiny_model_with_tokenizer, tmp_path):
    result = subprocess.run([sys.executable, "-c", TRACE, f"--model={tiny_model_with_tokenizer}", "--limit=3",
                             "--batch_size=2", f"--out={tmp_path}"], capture_output=True, text=True, timeout=900)
    report = json.loads(result.stdout.split("WALK ")[-1])
    assert report["code"] in (None, 0), result.stderr[-3000:]
    assert (tmp_path / "ships.json").exists()
    walk = report["walk"]  # each module in the order the run first enters it
    assert walk[:3] == ["jaxheads.launch.cli", "jaxheads.launch.common", "jaxheads.configs.common"]
    assert walk.index("jaxheads.jobs.ships") < walk.index("jaxheads.ships") < walk.index("jaxheads.scan")
    assert {"jaxheads.loading", "jaxheads.models.decoder", "jaxheads.tokens", "jaxheads.io"} <= set(walk)
    assert report["crossings"] == {}
