"""Portable kernels: training runs in a process pinned to the AVX2 path, whatever kernels the caller has."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from palimpsest.kernels import PORTABLE_ENV, in_portable_process, kernel_fingerprint, run_portable


def _on_avx2_x86() -> bool:
    try:
        return "avx2" in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


def _caller_fingerprints(env: dict[str, str | None]) -> tuple[str, str]:
    """(this interpreter's own fingerprint, its portable one) from a fresh interpreter started with `env` (None:
    the variable unset)."""
    code = ("from palimpsest.kernels import kernel_fingerprint, run_portable; "
            "print(kernel_fingerprint(), run_portable(kernel_fingerprint))")
    merged = {**os.environ, "PALIMPSEST_PORTABLE_KERNELS": "1", **env}
    done = subprocess.run([sys.executable, "-c", code], env={k: v for k, v in merged.items() if v is not None},
                          capture_output=True, text=True, check=True)
    own, portable = done.stdout.split()
    return own, portable


@pytest.mark.skipif(not _on_avx2_x86(), reason="the portable path is AVX2: this CPU has none")
def test_portable_builds_are_bit_identical_whatever_the_callers_kernels(monkeypatch):
    import torch

    monkeypatch.setenv("PALIMPSEST_PORTABLE_KERNELS", "1")
    assert not in_portable_process()
    assert run_portable(torch.backends.cpu.get_cpu_capability) == "AVX2"
    portable = run_portable(kernel_fingerprint)
    native_own, native_portable = _caller_fingerprints({"ATEN_CPU_CAPABILITY": None, "MKL_CBWR": None})
    default_own, default_portable = _caller_fingerprints({"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"})
    assert native_portable == default_portable == portable
    # the in-process fingerprints show what the pinning protects against (they may coincide on a small net)
    print({"native": native_own, "default": default_own, "portable": portable})


def test_the_portable_process_reports_errors_and_can_be_turned_off(monkeypatch):
    with pytest.raises(ZeroDivisionError):
        run_portable(divmod, 1, 0)
    monkeypatch.setenv("PALIMPSEST_PORTABLE_KERNELS", "0")
    assert run_portable(os.getpid) == os.getpid()  # off: runs in this process
    monkeypatch.setenv("PALIMPSEST_PORTABLE_KERNELS", "1")
    assert run_portable(os.getpid) != os.getpid()
    assert set(PORTABLE_ENV) == {"ATEN_CPU_CAPABILITY", "MKL_CBWR"}
