"""Portable CPU kernels for everything palimpsest trains (organisms, post-models, SAUCE's SAEs).

A model trained from scratch depends on the CPU's kernels: PyTorch picks its ATen kernels per instruction set
(AVX-512 / AVX2 / default) and MKL its BLAS code path, so two machines build two different organisms. Both are
chosen when torch and MKL start, from `ATEN_CPU_CAPABILITY` and `MKL_CBWR`, so training runs in a fresh process
started with both pinned to the AVX2 path, which every x86-64 CPU since 2013 has (measured: bit-identical weights
whatever kernels the calling process uses, at 1.05x the native AVX-512 build time; the `default` path would cost
2.0x). `PALIMPSEST_PORTABLE_KERNELS=0` trains in-process with the machine's own kernels instead.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

PORTABLE_ENV: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
SWITCH = "PALIMPSEST_PORTABLE_KERNELS"
# set only in the processes this module starts, with PORTABLE_ENV: the marker that they already run pinned
MARKER = "PALIMPSEST_KERNELS_PINNED"


def portable_enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def in_portable_process() -> bool:
    """True in a process started with PORTABLE_ENV by this module (its kernels were chosen from it at start-up)."""
    return os.environ.get(MARKER) == "1" and all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())


def kernel_tag() -> str:
    """What trains here, for metadata and cache keys: "avx2+mkl-avx2" when pinned, else "native-<capability>"."""
    if portable_enabled():
        return "avx2+mkl-avx2"
    import torch

    return f"native-{torch.backends.cpu.get_cpu_capability().lower()}"


@contextmanager
def pinned_env() -> Iterator[None]:
    """os.environ with PORTABLE_ENV (and the marker) while processes are started inside the block."""
    saved = {k: os.environ.get(k) for k in (*PORTABLE_ENV, MARKER)}
    os.environ.update({**PORTABLE_ENV, MARKER: "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_portable(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` with portable kernels: in this process when it already has them (or portability is
    off), else in a fresh Python process started with PORTABLE_ENV. `fn`, its arguments and its result must pickle.

    A plain subprocess rather than multiprocessing: a spawned worker re-runs the caller's main script, which a
    notebook or a script without a `__main__` guard cannot afford."""
    if not portable_enabled() or in_portable_process():
        return fn(*args, **kwargs)
    import pickle
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="palimpsest-portable-") as tmp:
        task, answer = Path(tmp) / "task.pkl", Path(tmp) / "answer.pkl"
        task.write_bytes(pickle.dumps((fn, args, kwargs)))
        env = {**os.environ, **PORTABLE_ENV, MARKER: "1"}
        code = "import sys; from palimpsest.kernels import _serve; _serve(sys.argv[1], sys.argv[2])"
        done = subprocess.run([sys.executable, "-c", code, str(task), str(answer)], env=env, check=False)
        if not answer.is_file():
            raise RuntimeError(f"the portable-kernel process for {getattr(fn, '__name__', fn)} died "
                               f"(exit code {done.returncode}) before it answered")
        ok, value, capability = pickle.loads(answer.read_bytes())
    if capability != "AVX2":  # a CPU without AVX2 falls back to other kernels: say so instead of hiding it
        import warnings

        warnings.warn(f"this CPU has no AVX2 (kernels: {capability}): what is trained here differs from the "
                      "portable builds of other machines", RuntimeWarning, stacklevel=2)
    if not ok:
        raise value
    return value


def _serve(task: str, answer: str) -> None:
    """The portable-kernel process: run the pickled call, pickle (ok, result or exception, ATen capability)."""
    import pickle

    import torch

    fn, args, kwargs = pickle.loads(Path(task).read_bytes())
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        reply = (True, fn(*args, **kwargs), capability)
    except Exception as error:  # noqa: BLE001 — the caller re-raises it
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001
            error = RuntimeError(f"{type(error).__name__}: {error}")
        reply = (False, error, capability)
    Path(answer).write_bytes(pickle.dumps(reply))


def submit_all(fn: Callable[..., Any], calls: list[tuple], max_workers: int) -> tuple[ProcessPoolExecutor, list]:
    """A spawn pool whose workers start with portable kernels (when enabled), and the futures of `fn(*call)` for
    each call. Workers are started while the tasks are submitted, so the environment is pinned only for that."""
    context = multiprocessing.get_context("spawn")
    pinned = portable_enabled() and not in_portable_process()
    with pinned_env() if pinned else nullcontext():
        pool = ProcessPoolExecutor(max_workers=max_workers, mp_context=context)
        futures = [pool.submit(fn, *call) for call in calls]
    return pool, futures


def kernel_fingerprint(steps: int = 20) -> str:
    """A digest of a small network after `steps` Adam steps (matmuls, RMS norm, SiLU, softmax, cross-entropy): two
    processes that give the same digest train bit-identical organisms. `run_portable(kernel_fingerprint)` is the
    portable path's digest, the same on every x86-64 CPU with AVX2 (and the same torch build)."""
    import hashlib

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 48, generator=generator)
        y = torch.randint(0, 16, (64,), generator=generator)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.RMSNorm(96), torch.nn.SiLU(),
                                  torch.nn.Linear(96, 16))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        digest = hashlib.sha256()
        for tensor in net.state_dict().values():
            digest.update(tensor.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
    finally:
        torch.set_num_threads(threads)
