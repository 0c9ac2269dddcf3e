"""One flag mechanism for every launch: the command's config file (`jaxheads.configs.NAME`, or `--config=FILE`)
gives the defaults, every config field is a flag with its default and a one-line help, and a flag given on the
command line wins. `launch(...)` then sets up the process (multi-host, compilation cache, logging) and calls
the command's `run(config)`; an error the user can fix is printed as one line, not a traceback.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import sys
import textwrap
from types import ModuleType
from typing import Callable

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxheads import interrupts
from jaxheads.errors import JaxheadsError
from jaxheads.weights.cache import cache_root, heal_compilation_cache

FLAGS = flags.FLAGS
HELP_ARGS = ("-h", "--help", "-help", "-?", "--helpshort")
_KINDS = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}

# Flags of every launch that set up the process but are not settings of a run.
PROCESS_FLAGS = {
    "config": "An ml_collections config file with get_config() that replaces the command's defaults, or the name "
              "of one shipped in jaxheads.configs such as finetune_authors (fields can also be set as "
              "--config.FIELD=VALUE).",
    "distributed": "Multi-host: call jax.distributed.initialize() first (coordinator found on TPU pods and under "
                   "Slurm); every process runs the same command and only process 0 writes files.",
    "compilation_cache": "Keep compiled programs in the jaxheads cache folder, so a rerun does not compile again.",
    "debug": "Show the full traceback of an error instead of one line.",
}


def config_file(config_module: ModuleType) -> str:
    """The path of a command's default config file (it is loaded by path, as `--config=FILE` files are)."""
    return config_module.__file__


def define_flags(config_module: ModuleType) -> None:
    """Defines `--config`, one flag per field of the module's config (default and help from the module), and the
    process flags."""
    config_flags.DEFINE_config_file("config", config_file(config_module), PROCESS_FLAGS["config"],
                                    lock_config=False)
    for name, value in config_module.get_config().items():
        _KINDS[type(value)](name, value, config_module.HELP[name])
    flags.DEFINE_boolean("distributed", False, PROCESS_FLAGS["distributed"])
    flags.DEFINE_boolean("compilation_cache", True, PROCESS_FLAGS["compilation_cache"])
    flags.DEFINE_boolean("debug", False, PROCESS_FLAGS["debug"])


def help_text(command: str, config_module: ModuleType, doc: str, inputs: str | None = None, many: bool = False) -> str:
    """`jaxheads COMMAND --help`: what the command does, examples, and every flag with its default."""
    width = 100
    files = "" if inputs is None else " [FILE ...]" if many else " [FILE]"
    lines = [f"usage: jaxheads {command}{files} [--FLAG=VALUE ...]", ""]
    description, *examples = inspect.cleandoc(doc).split("\n\n")
    lines.append(textwrap.fill(" ".join(description.split()), width))
    if inputs is not None:
        lines += ["", textwrap.fill(f"Files given without a flag are --{inputs}" + (" (several: joined with commas)."
                                                                                  if many else "."), width)]
    if examples:
        lines += ["", "examples:"] + [f"  {line.strip()}" for part in examples for line in part.splitlines()]
    lines += ["", f"flags (defaults from {config_file(config_module)}):"]
    rows = [(name, value, config_module.HELP[name]) for name, value in config_module.get_config().items()]
    rows += [("distributed", False, PROCESS_FLAGS["distributed"]),
             ("compilation_cache", True, PROCESS_FLAGS["compilation_cache"]),
             ("debug", False, PROCESS_FLAGS["debug"])]
    for name, value, line in rows:
        shown = f"'{value}'" if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else value
        lines.append(f"  --{name}={shown}")
        lines += textwrap.wrap(line, width, initial_indent="      ", subsequent_indent="      ")
    lines.append("  --config=FILE")
    lines += textwrap.wrap(PROCESS_FLAGS["config"], width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


def named_config(arg: str) -> str:
    """`--config=NAME` for a config shipped in `jaxheads.configs` (e.g. finetune_authors) becomes the path of its file;
    any other argument is returned unchanged."""
    name = arg.removeprefix("--config=") if arg.startswith("--config=") else None
    if not name or not name.isidentifier():
        return arg
    spec = importlib.util.find_spec(f"jaxheads.configs.{name}")
    return f"--config={spec.origin}" if spec is not None else arg


def resolved_config(config_module: ModuleType):
    """The command's config: its defaults, then the fields of a `--config` file (and `--config.FIELD` flags), then
    every flag given on the command line. A config file with a field the command does not know, and a NaN or
    infinite number (which no setting takes), are errors."""
    config = config_module.get_config()
    try:
        given = FLAGS.config
        names = set(given)
    except OSError as error:  # ml_collections reports a config file it could not find when it is first read
        raise JaxheadsError(f"--config {config_flags.get_config_filename(FLAGS['config'])}: no such file, or not "
                            "a config file (a .py file with get_config(), or a name in jaxheads.configs)") from error
    unknown = sorted(names - set(config))
    if unknown:
        raise JaxheadsError(f"the config {config_flags.get_config_filename(FLAGS['config'])} has fields this command "
                            f"does not know: {', '.join(unknown)}; its fields are {', '.join(config)}")
    for name in config:
        if name in given:
            config[name] = given[name]
        if FLAGS[name].present:
            config[name] = FLAGS[name].value
        if isinstance(config[name], float) and not math.isfinite(config[name]):
            raise JaxheadsError(f"--{name} must be a finite number, got {config[name]}")
    return config


def cache_compilations() -> None:
    """Turns on JAX's persistent compilation cache in the jaxheads cache folder."""
    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
    heal_compilation_cache(cache_root() / "xla")  # an unreadable entry is compiled again, not warned about forever


def with_inputs(config, command: str, files: list[str], inputs: str | None, many: bool):
    """`config` with the arguments given without a flag (`files`) as its field `inputs` (comma-joined when the
    command takes `many`); arguments a command does not take, or given both ways, are errors naming the flag."""
    if not files:
        return config
    if inputs is None:
        raise JaxheadsError(f"jaxheads {command} takes only --flags, not {' '.join(files)}")
    if len(files) > 1 and not many:
        raise JaxheadsError(f"jaxheads {command} takes one file without a flag (--{inputs}), got {len(files)}: "
                            f"{' '.join(files)}")
    if FLAGS[inputs].present:
        raise JaxheadsError(f"jaxheads {command}: give --{inputs} or the file(s) {' '.join(files)}, not both")
    config[inputs] = ",".join(files)
    return config


def launch(command: str, run: Callable, config_module: ModuleType, doc: str, argv: list[str] | None = None,
           inputs: str | None = None, many: bool = False) -> None:
    """Parses `argv` (default: the process's arguments) into the command's config and calls `run(config)`;
    arguments without a flag fill the config field `inputs` (several with `many`). `--help` prints every flag
    with its default and exits with status 0."""
    argv = [named_config(arg) for arg in (sys.argv if argv is None else argv)]
    if any(arg in HELP_ARGS for arg in argv[1:]):
        sys.stdout.write(help_text(command, config_module, doc, inputs, many))
        sys.exit(0)
    define_flags(config_module)

    def main(leftover: list[str]) -> None:
        interrupts.install()
        if FLAGS.distributed:
            jax.distributed.initialize()
        if FLAGS.compilation_cache:
            cache_compilations()
        if not FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # Orbax and absl INFO lines bury the progress bars
        try:
            run(with_inputs(resolved_config(config_module), command, leftover[1:], inputs, many))
            if interrupts.interrupted():  # a KeyboardInterrupt that something caught or dropped
                raise KeyboardInterrupt
        except (JaxheadsError, KeyboardInterrupt) as error:
            if FLAGS.debug:
                raise
            message = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
            sys.stderr.write(f"jaxheads {command}: error: {message}\n")
            sys.exit(130 if isinstance(error, KeyboardInterrupt) else 2)

    app.run(main, argv=argv, flags_parser=functools.partial(parse_flags, command))


def parse_flags(command: str, argv: list[str]) -> list[str]:
    """absl's flag parsing, with a `--config` file that does not load (missing, a syntax error, a get_config that
    fails) reported as one line naming the file (`--debug`: the traceback)."""
    try:
        return app.parse_flags_with_usage(argv)
    except Exception as error:  # absl reports bad flag values itself (usage and exit); this is the config file
        if "--debug" in argv:
            raise
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, SyntaxError):
            reason = f"syntax error at line {cause.lineno}: {cause.msg}"
        elif isinstance(cause, OSError):
            reason = "cannot be read (no such file, or not a config file)"
        else:
            reason = f"{type(cause).__name__}: {cause}".splitlines()[0]
        given = [arg.removeprefix("--config=") for arg in argv if arg.startswith("--config=")]
        sys.stderr.write(f"jaxheads {command}: error: --config {given[-1] if given else ''}: {reason}\n")
        sys.exit(2)
