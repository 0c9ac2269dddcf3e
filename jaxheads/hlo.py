"""What a compiled program does, read from its optimized HLO text (`compiled.as_text()`): the bytes each kind of
collective moves per device and the matmul FLOPs per device, with the body of every while loop (`lax.scan`,
`fori_loop`) counted as often as it runs. XLA's own `cost_analysis()` counts a loop body once, which for a model
scanned over its layers is off by the number of layers.

Collectives: a collective's bytes are its output shape's bytes; `-start`/`-done` pairs count once; XLA:TPU's
clones of one collective in several fused computations share a channel id and count once; its reduce-scatter
fusions (`all-reduce-scatter*`: an all-reduce then a slice) count as reduce-scatter of the slice. Loop trip
counts come from the backend config (`known_trip_count`) or from the loop condition, the counter's step and its
initial value; a loop whose bound or start is not a constant (a layer loop from a traced start layer) has an
unknown trip count, given by the caller (`unknown_trips`). A computation called from several places is counted at
its largest multiplicity; every branch of a conditional is counted.
"""
from __future__ import annotations

import re
from collections import defaultdict

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "ragged-all-to-all",
         "collective-permute", "collective-broadcast")

_DTYPE_BYTES = {
    "pred": 1, "s1": 0.125, "u1": 0.125, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5,
    "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8,
    "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16, "token": 0,
}

_COMP_HDR = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]+m[0-9]+[a-z]*)?)\[([0-9,]*)\]")
_CALLEES = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_MULTI_CALLEES = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_COMMENT = re.compile(r"/\*.*?\*/")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


def _dtype_bytes(dt: str) -> float:
    if dt in _DTYPE_BYTES:
        return _DTYPE_BYTES[dt]
    if dt.startswith("f8") or dt.startswith("f4") or dt.startswith("f6"):
        return {"f8": 1, "f6": 0.75, "f4": 0.5}[dt[:2]]
    raise ValueError(f"unknown HLO dtype {dt!r}")


def _split_shape(rest: str) -> tuple[str, str]:
    """Split '<shape> <opcode>(...)...' into (shape_text, remainder). Tuple shapes contain spaces."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1:].lstrip()
    i = rest.find(" ")
    return rest[:i], rest[i + 1:]


def shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO shape string (array or tuple); layouts like {2,1,0:T(8,128)(2,1)S(1)} ignored."""
    shape_text = re.sub(r"\{[^{}]*\}", "", shape_text)  # drop layouts
    total = 0.0
    for dt, dims in _ARRAY.findall(shape_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _dtype_bytes(dt)
    return int(total)


def _parse(hlo_text: str):
    comps: dict[str, list[tuple[str, str, str, str]]] = {}   # comp -> [(name, shape, opcode, line)]
    entry = None
    cur = None
    for line in hlo_text.splitlines():
        if cur is None:
            m = _COMP_HDR.match(line)
            if m:
                cur = m.group(2)
                comps[cur] = []
                if m.group(1):
                    entry = cur
            continue
        if line.startswith("}"):
            cur = None
            continue
        line = _COMMENT.sub("", line)          # drop /*index=5*/ markers in long operand lists
        m = _INSTR.match(line)
        if not m:
            continue
        name, rest = m.groups()
        shape, rem = _split_shape(rest)
        opcode = rem.split("(", 1)[0].strip()
        comps[cur].append((name, shape, opcode, line))
    return comps, entry


def _operands(line: str, opcode: str) -> list[str]:
    m = re.search(re.escape(opcode) + r"\(([^)]*)\)", line)
    return [a.strip().lstrip("%") for a in m.group(1).split(",") if a.strip()] if m else []


def _follow(instrs: dict, name: str, opcode: str, pattern: str):
    """Follows copy/bitcast/convert from `name` to an `opcode` instruction and returns the integer `pattern` reads
    from its line; None when the chain ends anywhere else."""
    for _ in range(8):
        if name not in instrs:
            return None
        _, op, line = instrs[name]
        if op == opcode:
            m = re.search(pattern, line)
            return int(m.group(1)) if m else None
        if op not in ("copy", "bitcast", "convert"):
            return None
        name = _operands(line, op)[0]
    return None


def _const_value(instrs: dict, name: str):
    """The scalar integer constant `name` is (through copies and conversions), or None."""
    return _follow(instrs, name, "constant", r"constant\((-?\d+)\)")


def _gte_index(instrs: dict, name: str):
    """k when `name` is (through copies and conversions) get-tuple-element(param), index=k; else None."""
    return _follow(instrs, name, "get-tuple-element", r"index=(\d+)")


def _trip_count(while_line: str, comps, caller: str) -> tuple[int, bool]:  # noqa: C901 (one parse, in order)
    """Trip count of a while op: backend_config known_trip_count if present, else derived from
    `compare(counter, N)` in the condition, the counter's constant step in the body's ROOT tuple
    and its constant init in the caller's operand tuple (defaults: init 0, step 1)."""
    m = _TRIP.search(while_line)
    if m:
        return int(m.group(1)), True
    cm = re.search(r"\bcondition=%?([\w.\-]+)", while_line)
    bm = re.search(r"\bbody=%?([\w.\-]+)", while_line)
    if not cm or cm.group(1) not in comps:
        return 1, False
    cond = {n: (s, op, l) for n, s, op, l in comps[cm.group(1)]}
    for n, (s, op, l) in list(cond.items()):
        if op != "compare":
            continue
        dm = re.search(r"direction=(LT|LE|GT|GE|NE)", l)
        ops = _operands(l, "compare")
        if not dm or len(ops) != 2:
            continue
        direction = dm.group(1)
        bound, idx = _const_value(cond, ops[1]), _gte_index(cond, ops[0])
        if bound is None:                                   # constant on the left: flip
            bound, idx = _const_value(cond, ops[0]), _gte_index(cond, ops[1])
            direction = {"LT": "GT", "LE": "GE", "GT": "LT", "GE": "LE"}.get(direction, direction)
        if bound is None:
            continue
        init, step = 0, 1
        if idx is not None and bm and bm.group(1) in comps:
            body = {n2: (s2, op2, l2) for n2, s2, op2, l2 in comps[bm.group(1)]}
            root = next((v for v in body.values() if re.match(r"^\s*ROOT\s", v[2]) and v[1] == "tuple"), None)
            if root is not None:
                elems = _operands(root[2], "tuple")
                if idx < len(elems) and elems[idx] in body:
                    es, eop, el = body[elems[idx]]
                    if eop in ("add", "subtract"):
                        a, b = _operands(el, eop)
                        st = _const_value(body, b) if _const_value(body, b) is not None else _const_value(body, a)
                        if st is not None:
                            step = st if eop == "add" else -st
            wop = _operands(while_line, "while")
            caller_instrs = {n2: (s2, op2, l2) for n2, s2, op2, l2 in comps.get(caller, [])}
            if wop and wop[0] in caller_instrs and caller_instrs[wop[0]][1] == "tuple":
                elems = _operands(caller_instrs[wop[0]][2], "tuple")
                if idx < len(elems):
                    iv = _const_value(caller_instrs, elems[idx])
                    if iv is None:  # a traced start: the trip count is not known from the program
                        return 1, False
                    init = iv
        if step == 0:
            return 1, False
        if direction in ("LT", "NE"):
            n_iter = -(-(bound - init) // step)
        elif direction == "LE":
            n_iter = -(-(bound - init + 1) // step)
        elif direction == "GT":
            n_iter = -(-(init - bound) // -step)
        else:  # GE
            n_iter = -(-(init - bound + 1) // -step)
        return max(int(n_iter), 0), True
    return 1, False


def _walk(hlo_text: str, unknown_trips: int = 1):
    comps, entry = _parse(hlo_text)
    if entry is None:
        raise ValueError("no ENTRY computation found")
    # propagate (multiplier, scope) from ENTRY through the call graph
    mult = defaultdict(int)
    scope: dict[str, str] = {entry: entry}
    mult[entry] = 1
    trip_info = {}
    order = [entry]
    seen = {entry}
    i = 0
    while i < len(order):
        c = order[i]; i += 1
        for name, shape, opcode, line in comps.get(c, []):
            callees = [(k, v) for k, v in _CALLEES.findall(line)]
            for k, group in _MULTI_CALLEES.findall(line):
                callees += [(k, x.strip().lstrip("%")) for x in group.split(",") if x.strip()]
            if opcode == "while":
                n, exact = _trip_count(line, comps, c)
                trip_info[name] = {"trip_count": n if exact else unknown_trips, "found": exact}
            for kind, callee in callees:
                if callee not in comps:
                    continue
                if opcode == "while" and kind == "body":
                    m_new, s_new = mult[c] * trip_info[name]["trip_count"], callee
                elif opcode == "while" and kind == "condition":
                    m_new, s_new = mult[c] * (trip_info[name]["trip_count"] + 1), callee
                else:
                    m_new, s_new = mult[c], scope[c]
                # a computation reached from several call sites: keep the max multiplicity
                if callee not in seen or m_new > mult[callee]:
                    mult[callee] = m_new
                    scope[callee] = s_new
                    if callee not in seen:
                        seen.add(callee); order.append(callee)
    return comps, order, mult, scope, trip_info


def collective_stats(hlo_text: str, unknown_trips: int = 1) -> dict:
    """Per kind: `bytes` (outputs), `in_bytes` (operands) and `count` of the collectives executed per device; `ops`,
    each collective with its computation and how often it runs; `while`, each loop's trip count."""
    comps, order, mult, scope, trip_info = _walk(hlo_text, unknown_trips)
    out_bytes = defaultdict(int)
    in_bytes = defaultdict(int)
    out_count = defaultdict(int)
    static = []
    dedup = set()
    for c in order:
        shapes = {n: s for n, s, op, l in comps[c]}
        root = next((x for x in comps[c] if re.match(r"^\s*ROOT\s", x[3])), None)
        for name, shape, opcode, line in comps[c]:
            base = opcode[:-5] if opcode.endswith("-done") else opcode
            if opcode.endswith("-start") or base not in KINDS:
                continue
            ch = _CHANNEL.search(line)
            key = (ch.group(1), scope[c], base) if ch else (c, name)
            if key in dedup:
                continue
            dedup.add(key)
            b = shape_bytes(shape)
            args = re.search(re.escape(opcode) + r"\(([^)]*)\)", line)
            ops = [a.strip().lstrip("%") for a in args.group(1).split(",")] if args else []
            ib = sum(shape_bytes(shapes[a]) for a in ops if a in shapes)
            # TPU lowers reduce-scatter to a kCustom fusion `all-reduce-scatter*` whose body is
            # all-reduce(full) -> dynamic-slice(shard). Report it as reduce-scatter with the
            # fusion's (shard) output shape as "bytes" and the full all-reduce operand as in_bytes.
            if base == "all-reduce" and root is not None and (
                    c.startswith("all-reduce-scatter") or
                    (root[2] == "dynamic-slice" and ("%" + name) in root[3].split("dynamic-slice(", 1)[-1])):
                base = "reduce-scatter"
                b = shape_bytes(root[1])
            out_bytes[base] += b * mult[c]
            in_bytes[base] += ib * mult[c]
            out_count[base] += mult[c]
            static.append({"kind": base, "name": name, "computation": c, "bytes": b, "in_bytes": ib,
                           "times": mult[c], "channel_id": ch.group(1) if ch else None})
    return {"bytes": dict(out_bytes), "in_bytes": dict(in_bytes), "count": dict(out_count),
            "ops": static, "while": trip_info}


def collective_bytes(hlo_text: str, unknown_trips: int = 1) -> dict[str, int]:
    """Bytes moved per device by each kind of collective (`collective_stats`)."""
    return collective_stats(hlo_text, unknown_trips)["bytes"]


def _dims(shape_text: str) -> list[int]:
    m = _ARRAY.search(re.sub(r"\{[^{}]*\}", "", shape_text))
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _conv_taps(line, lhs, lhs_l, rhs, rhs_l, out, out_l) -> int:
    """Sum over output spatial positions of the number of window taps that hit real (non-padding,
    non-dilation-hole) input elements, multiplied over spatial dims. XLA:TPU expresses batched
    matmuls/attention einsums as convolutions with base dilation, so window size != taps."""
    nsp = sum(ch.isdigit() for ch in out_l)
    if nsp == 0:
        return 1
    w = re.search(r"window=\{([^}]*)\}", line)
    attrs = dict(kv.split("=", 1) for kv in w.group(1).split()) if w else {}
    def per_dim(key, default):
        v = attrs.get(key)
        return [default] * nsp if v is None else v.split("x")
    sizes = [int(x) for x in per_dim("size", 1)]
    strides = [int(x) for x in per_dim("stride", 1)]
    pads = [int(x.split("_")[0]) for x in per_dim("pad", "0_0")]
    ldil = [int(x) for x in per_dim("lhs_dilate", 1)]
    rdil = [int(x) for x in per_dim("rhs_dilate", 1)]
    total = 1
    for d in range(nsp):
        n = lhs[lhs_l.index(str(d))]
        n_out = out[out_l.index(str(d))]
        real = {pads[d] + i * ldil[d] for i in range(n)}
        hits = 0
        for j in range(n_out):
            base = j * strides[d]
            hits += sum((base + t * rdil[d]) in real for t in range(sizes[d]))
        total *= hits
    return total


def hlo_flops(hlo_text: str, unknown_trips: int = 1) -> float:
    """Matmul FLOPs (2*M*N*K) per device of the dot and convolution ops of a compiled program, every while body
    counted as often as it runs (`unknown_trips` times for a loop whose trip count the program does not fix)."""
    comps, order, mult, scope, trip_info = _walk(hlo_text, unknown_trips)
    total = 0.0
    for c in order:
        shapes = {n: s for n, s, op, l in comps[c]}
        for name, shape, opcode, line in comps[c]:
            if opcode not in ("dot", "convolution"):
                continue
            args = re.search(re.escape(opcode) + r"\(([^)]*)\)", line)
            ops = [a.strip().lstrip("%") for a in args.group(1).split(",")] if args else []
            if len(ops) < 2 or ops[0] not in shapes or ops[1] not in shapes:
                continue
            lhs, rhs, out = _dims(shapes[ops[0]]), _dims(shapes[ops[1]]), _dims(shape)
            if opcode == "dot":
                cd = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line)
                k = _prod(lhs[int(d)] for d in cd.group(1).split(",") if d) if cd else 1
                total += 2.0 * _prod(out) * k * mult[c]
            else:
                dl = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", line)
                if not dl:
                    continue
                lhs_l, rhs_l, out_l = dl.groups()
                k = lhs[lhs_l.index("f")] if "f" in lhs_l else 1
                fg = re.search(r"feature_group_count=(\d+)", line)
                k //= int(fg.group(1)) if fg else 1
                n_out = (out[out_l.index("b")] if "b" in out_l else 1) * (out[out_l.index("f")] if "f" in out_l else 1)
                taps = _conv_taps(line, lhs, lhs_l, rhs, rhs_l, out, out_l)
                total += 2.0 * n_out * k * taps * mult[c]
    return total
