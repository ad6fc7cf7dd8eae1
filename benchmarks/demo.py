"""`palimpsest demo` on the organism, cold (empty cache) and warm (everything cached), in one run.

Targets on 2 CPU cores: cold under 300 s, warm under 90 s. The last line is the JSON result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import result_line  # noqa: E402

COLD_TARGET_S, WARM_TARGET_S = 300.0, 90.0


def run_demo(cache: Path, out: Path) -> float:
    env = dict(os.environ, PALIMPSEST_CACHE=str(cache), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "palimpsest.cli", "demo", "--out", str(out)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="palimpsest-demo-bench-"))
    cold = run_demo(work / "cache", work / "out-cold")
    warm = run_demo(work / "cache", work / "out-warm")
    print(f"cold {cold:.0f} s (target {COLD_TARGET_S:.0f}), warm {warm:.0f} s (target {WARM_TARGET_S:.0f})")
    print(result_line("demo", warm / WARM_TARGET_S, "<= 1.0 (warm / 90 s; cold / 300 s in cold_ratio)",
                      warm <= WARM_TARGET_S and cold <= COLD_TARGET_S, cold_s=round(cold, 1), warm_s=round(warm, 1),
                      cold_ratio=round(cold / COLD_TARGET_S, 3)))


if __name__ == "__main__":
    main()

# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
