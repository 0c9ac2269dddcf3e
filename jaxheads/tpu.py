"""TPUs seen from any host: libtpu kept quiet where there is no TPU, and the chips of a TPU topology to compile
for ahead of time (`jaxheads.aot`), with their usable HBM and peak FLOP rate.

Importing this module (the package face does it first) sets three libtpu variables on a host with no TPU and no
`TPU_*` settings of its own: `TPU_WORKER_HOSTNAMES=localhost` and `TPU_HOST_BOUNDS=1,1,1`. With libtpu installed
(`pip install 'jaxheads[tpu]'`), JAX's TPU probe otherwise prints five lines of warnings at the first device
query of every process ("could not determine TPU accelerator type", "unexpected worker hostname", a source
location trace); and only one process at a time may start libtpu unless `ALLOW_MULTIPLE_LIBTPU_LOAD=1` (with no
chip to share, several processes may compile for a topology at once, so that is set too). The variables are read only by libtpu's own start-up: JAX still probes for a TPU, finds none and
runs on the CPU or GPU as before, and compiling for a topology works the same. A real TPU host (a Google TPU PCI
device, `/dev/accel*`, `/dev/vfio/N`, or any `TPU_*` / `MEGASCALE_*` variable) is left untouched;
`JAXHEADS_NO_QUIET_LIBTPU=1` leaves every host untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.util
import os
import re

import jax  # importing JAX starts no backend: libtpu reads the variables below when the first device query starts it
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import Mesh

from jaxheads.sharding import make_mesh

GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076", "0x0083", "0x007c"}
TPU_ENV_VARIABLES = ("TPU_WORKER_HOSTNAMES", "TPU_HOST_BOUNDS", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID",
                     "TPU_PROCESS_ADDRESSES", "TPU_PROCESS_BOUNDS", "TPU_CHIPS_PER_PROCESS_BOUNDS",
                     "TPU_CHIPS_PER_HOST_BOUNDS", "TPU_TOPOLOGY", "TPU_NAME", "JAX_FORCE_TPU_INIT",
                     "MEGASCALE_COORDINATOR_ADDRESS")


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""


def tpu_maybe_present() -> bool:
    """Whether anything on this host suggests TPU hardware: a Google PCI device with a TPU id or of the
    processing-accelerator class, or a TPU runtime's device nodes."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        if _read(vendor) != GOOGLE_PCI_VENDOR:
            continue
        folder = os.path.dirname(vendor)
        if _read(os.path.join(folder, "device")) in TPU_PCI_DEVICES or _read(os.path.join(folder, "class")).startswith("0x12"):
            return True
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or glob.glob("/sys/class/accel/accel*"))


def quiet_libtpu() -> bool:
    """Sets libtpu's single-host variables on a host without a TPU (see the module docstring); True if it did."""
    if os.environ.get("JAXHEADS_NO_QUIET_LIBTPU") or any(name in os.environ for name in TPU_ENV_VARIABLES):
        return False
    if tpu_maybe_present():
        return False
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no chip to share: several processes may compile
    return True


quiet_libtpu()

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Generation:
    """A TPU generation: its name in libtpu's topology names, its chip configuration, its bfloat16 peak FLOP/s
    per chip (Google's published figures) and the HBM per chip XLA lets a program use (read from XLA's
    out-of-memory message by `usable_hbm`; these are the values read here, used when a message cannot be read)."""

    libtpu_name: str
    chip_config: str
    peak_flops: float
    usable_hbm: int


GENERATIONS = {
    "v4": Generation("v4", "megacore", 275e12, int(30.75 * GIB)),
    "v5e": Generation("v5e", "default", 197e12, int(15.75 * GIB)),
    "v5p": Generation("v5", "megacore", 459e12, int(95.74 * GIB)),
    "v6e": Generation("v6e", "default", 918e12, int(31.25 * GIB)),
}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):([0-9]+(?:x[0-9]+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """The chips of `slices` TPU slices of one topology (compile-only devices: nothing runs on them)."""

    name: str
    generation: str
    slices: int
    devices: tuple

    @property
    def chips(self) -> int:
        return len(self.devices)

    @property
    def peak_flops(self) -> float:
        return GENERATIONS[self.generation].peak_flops


def topology(name: str, slices: int = 1) -> Topology:
    """The chips of a topology such as "v5e:8x8" (a v5e-64 slice), "v5p:4x4x4" (v5p-64, 64 chips of two
    cores), "v4:2x2x2" or "v6e:4x4", `slices` times (data parallel over the slices). Needs libtpu
    (`pip install 'jaxheads[tpu]'`); no TPU is needed."""
    match = _TOPOLOGY.match(name.strip())
    if not match:
        raise ValueError(f"--topology wants GENERATION:SHAPE with GENERATION one of {', '.join(GENERATIONS)}, "
                         f"e.g. v5e:8x8 (v5e-64) or v5p:4x4x4 (v5p-64); got {name!r}")
    if slices < 1:
        raise ValueError(f"--slices must be at least 1, got {slices}")
    generation, shape = match.groups()
    spec = GENERATIONS[generation]
    try:
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{spec.libtpu_name}:{shape}", chip_config_name=spec.chip_config,
            chips_per_host_bounds=(2, 2, 1), num_slices=slices)
    except Exception as error:  # without libtpu jax cannot find the TPU plugin
        hint = "" if importlib.util.find_spec("libtpu") else ". Compiling for a TPU needs libtpu: pip install 'jaxheads[tpu]'"
        raise RuntimeError(f"cannot describe the TPU topology {name!r}: {error}{hint}") from error
    return Topology(name, generation, slices, tuple(description.devices))


def mesh(topo: Topology, data: int, model: int) -> Mesh:
    """A `(data, model)` mesh over a topology's chips that follows the torus, with the data axis spanning the
    slices (`sharding.make_mesh`, the mesh a run on those chips would build)."""
    if data * model != topo.chips:
        raise ValueError(f"--mesh={data},{model} has {data * model} devices; {topo.name} x {topo.slices} slice(s) "
                         f"has {topo.chips} chips: pass a data x model mesh of {topo.chips}")
    return make_mesh(data, model, devices=topo.devices)


_OOM = (re.compile(r"required for HLO temporaries \((?P<need>[0-9.]+)(?P<need_unit>[KMGT]?)\) exceeds available "
                   r"HBM \((?P<have>[0-9.]+)(?P<have_unit>[KMGT]?)\)"),
        re.compile(r"Used (?P<need>[0-9.]+)(?P<need_unit>[KMGT]?) of (?P<have>[0-9.]+)(?P<have_unit>[KMGT]?) hbm"))
_UNIT = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_oom(message: str) -> tuple[int, int] | None:
    """`(needed, available)` bytes per chip from XLA's compile-time out-of-memory message (2-decimal GiB
    precision; XLA words it "... required for HLO temporaries (X) exceeds available HBM (Y)" or "Used X of Y hbm"),
    or None when `message` is not one."""
    found = next((match for match in (pattern.search(message) for pattern in _OOM) if match), None)
    if not found:
        return None
    return (int(float(found["need"]) * _UNIT[found["need_unit"]]),
            int(float(found["have"]) * _UNIT[found["have_unit"]]))


@functools.cache
def usable_hbm(device) -> int:
    """The HBM per chip XLA lets a program use on `device`'s generation: read from the out-of-memory error of a
    program that asks for 1 TiB (the generation's recorded value when the message cannot be read)."""
    sharding = jax.sharding.SingleDeviceSharding(device)
    try:
        jax.jit(lambda: jnp.zeros((2 ** 38,), jnp.float32), out_shardings=sharding).lower().compile()
    except Exception as error:
        parsed = parse_oom(str(error))
        if parsed:
            return parsed[1]
    kind = str(getattr(device, "device_kind", "")).lower()
    for name, spec in (("v5 lite", GENERATIONS["v5e"]), ("v6 lite", GENERATIONS["v6e"]), ("v5", GENERATIONS["v5p"]),
                       ("v4", GENERATIONS["v4"])):
        if name in kind:
            return spec.usable_hbm
    raise RuntimeError(f"cannot tell the usable HBM of {device}")
