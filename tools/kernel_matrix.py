"""Run the default test suite under several CPU kernel paths, each on an empty cache, and compare.

Each leg simulates another machine (torch and MKL read these variables at start-up). The last leg also turns off
portable kernels, so it trains other organisms, as a CPU without AVX2 would: the tests must hold there too.
Organism numbers the tests record (pytest `record_property`) are printed side by side, one column per leg.
Usage: python tools/kernel_matrix.py [--legs native,avx2,default,default-native-builds] [--out out/matrix]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

LEGS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
    "default-native-builds": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
                              "PALIMPSEST_PORTABLE_KERNELS": "0"},
}


def run_leg(name: str, out: Path, pytest_args: list[str]) -> tuple[int, float]:
    env = {**os.environ, **LEGS[name], "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for key in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "PALIMPSEST_PORTABLE_KERNELS"):
        if key not in LEGS[name]:
            env.pop(key, None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"palimpsest-matrix-{name}-") as cache:
        env["PALIMPSEST_CACHE"] = cache
        done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-m", "not slow",
                               f"--junitxml={out / (name + '.xml')}", *pytest_args], env=env, check=False)
    return done.returncode, time.perf_counter() - started


def recorded(xml: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(test outcome per test id, recorded property per "test id: property")."""
    outcomes, values = {}, {}
    if not xml.is_file():
        return outcomes, values
    for case in ET.parse(xml).getroot().iter("testcase"):
        test = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[test] = "skipped" if case.find("skipped") is not None else ("FAILED" if failed else "passed")
        for prop in case.iter("property"):
            values[f"{test}: {prop.get('name')}"] = prop.get("value", "")
    return outcomes, values


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--legs", default=",".join(LEGS))
    parser.add_argument("--out", default="out/matrix")
    args, pytest_args = parser.parse_known_args()
    legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    unknown = sorted(set(legs) - set(LEGS))
    if unknown:
        print(f"unknown legs {unknown}; choose from {', '.join(LEGS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    codes = {}
    for leg in legs:
        print(f"== leg {leg}: {LEGS[leg] or 'the machine’s own kernels'}", flush=True)
        codes[leg], seconds = run_leg(leg, out, pytest_args)
        print(f"== leg {leg}: exit {codes[leg]} in {seconds:.0f} s", flush=True)
    tables = {leg: recorded(out / f"{leg}.xml") for leg in legs}
    keys = sorted({k for _, values in tables.values() for k in values})
    lines = ["| measured | " + " | ".join(legs) + " |", "|---" * (len(legs) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(tables[leg][1].get(k, "") for leg in legs) + " |" for k in keys]
    failed = sorted({t for leg in legs for t, o in tables[leg][0].items() if o == "FAILED"})
    lines += ["", *(f"FAILED {t}: " + ", ".join(leg for leg in legs if tables[leg][0].get(t) == "FAILED")
                    for t in failed)]
    (out / "matrix.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
