#!/usr/bin/env python3
"""Exclusive instructions of a callgrind output grouped by layer: by the crate of the function
they ran in (`--by file`: of the source file, so inlined code counts where it was written), the
whole process's instructions split so that the layers sum to the total. Code inlined into a
function counts as that function's crate by default (a `HeaderMap` insert inlined into
keygate's header rewriting counts as keygate's). Usage: by_crate.py FILE.callgrind [REQUESTS]
[--by file]"""
import collections
import re
import sys


def layer(path):
    m = re.search(r"/registry/src/[^/]+/([A-Za-z0-9_\-]+?)-\d+\.\d+[^/]*/", path)
    if m:
        return m.group(1)
    if "/rustc/" in path or "/library/" in path:
        return "std (Rust)"
    if path.startswith("src/") or "/src/" in path and "keygate" in path or path.startswith("/work/"):
        return "keygate"
    if "libc" in path or path.startswith("./") or "sysdeps" in path or "glibc" in path:
        return "glibc (memcpy, syscalls' wrappers)"
    return path or "???"


def crate_of(symbol, obj):
    """The crate a Rust symbol belongs to (`<hyper::X as tokio::Y>::f` is hyper's), else the
    object file (libc, the dynamic loader)."""
    s = symbol.lstrip("<&*")
    s = re.sub(r"^(mut |dyn |const )+", "", s)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", s)
    if m:
        name = m.group(1)
        return {"core": "std (Rust)", "alloc": "std (Rust)", "std": "std (Rust)"}.get(name, name.replace("_", "-"))
    if "libc.so" in obj:
        return "glibc (memcpy, syscalls' wrappers)"
    if "mi_" in symbol or "_mi_" in symbol:
        return "mimalloc"
    return obj.rsplit("/", 1)[-1] or "???"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    by_file = "--by" in sys.argv and sys.argv[sys.argv.index("--by") + 1] == "file"
    if by_file:
        args = [a for a in args if a != "file"]
    path, requests = args[0], int(args[1]) if len(args) > 1 else 1
    names, fns, objs = {}, {}, {}
    totals = collections.Counter()
    current = "???"
    current_fn, current_obj = "???", ""
    skip_next = False
    with open(path, errors="replace") as f:
        for line in f:
            if skip_next:
                skip_next = False
                continue
            # Names are compressed: `fn=(12) name` the first time, `fn=(12)` after.
            m = re.match(r"(c?)(ob|fn|fl|fi|fe)=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m:
                called, kind, number, name = m.groups()
                table = {"ob": objs, "fn": fns}.get(kind, names)
                if name is not None:
                    table[number] = name
                # The names of a called function (`cfn=`, …) do not switch the current one.
                if not called:
                    if kind == "ob":
                        current_obj = objs.get(number, "")
                    elif kind == "fn":
                        current_fn = fns.get(number, "???")
                    else:
                        current = names.get(number, "???")
                continue
            if line.startswith("calls="):
                # The next line is the call's inclusive cost: not this function's own.
                skip_next = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    key = layer(current) if by_file else crate_of(current_fn, current_obj)
                    totals[key] += int(parts[1])
    total = sum(totals.values())
    print(f"{'layer':<40} {'instructions/request':>20} {'share':>7}")
    for name, n in totals.most_common():
        if n / total < 0.002:
            continue
        print(f"{name:<40} {n / requests:>20,.0f} {100 * n / total:>6.1f}%")
    print(f"{'total':<40} {total / requests:>20,.0f}")


main()
